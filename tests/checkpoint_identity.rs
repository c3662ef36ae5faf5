//! A checkpoint folder never resumes the wrong state silently: an edited
//! manifest is skipped (and the run says so on the console, in events.jsonl
//! and in report.json), another training's checkpoints are refused before
//! anything starts (exit 7, naming what differs) unless the job asks for
//! them on purpose, and a job whose last step is already checkpointed says
//! so and runs nothing.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn job(dir: &Path, steps: u64, seed: u64) -> Value {
    let mut spec = train_job("ident", 1, 2, steps);
    spec["workload"]["seed"] = json!(seed);
    spec["checkpoint"] =
        json!({"dir": dir.join("ck").to_str().unwrap(), "every_steps": 10, "keep": 3});
    spec
}

fn warnings(report: &Value) -> Vec<String> {
    report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_edited_manifest_is_skipped_and_the_run_says_so() {
    let dir = scratch("ident-edit");
    let (out, _) = run_job(&dir, &job(&dir, 40, 7), "first", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    // Flip the newest manifest's step: it must not verify.
    let m = dir.join("ck/step-0000000040/manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    assert!(text.contains("\"step\": 40"), "{text}");
    std::fs::write(&m, text.replacen("\"step\": 40", "\"step\": 41", 1)).unwrap();

    let (out, report) = run_job(&dir, &job(&dir, 50, 7), "second", &[], &[], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("warning: checkpoint.dir")
            && out.stderr.contains(
                "skipping checkpoint step-0000000040: manifest does not match its own checksum"
            ),
        "{}",
        out.stderr
    );
    assert_eq!(report["results"]["0"]["resumed_from_step"], 30);
    let w = warnings(&report);
    assert!(
        w.iter()
            .any(|w| w.contains("step-0000000040") && w.contains("own checksum")),
        "{w:?}"
    );
    // The loading rank skipped it too, on the run's timeline.
    let skipped = events_named(&dir.join("runs/second"), "checkpoint_skipped");
    assert!(
        skipped
            .iter()
            .any(|e| e["rank"] == 0 && e["message"].as_str().unwrap().contains("own checksum")),
        "{skipped:?}"
    );

    // Every manifest broken: the run starts from step 0, and says so.
    for entry in std::fs::read_dir(dir.join("ck")).unwrap() {
        let m = entry.unwrap().path().join("manifest.json");
        if m.exists() {
            std::fs::write(&m, b"{\"format_version\": 3}").unwrap();
        }
    }
    let (out, report) = run_job(&dir, &job(&dir, 60, 7), "third", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(report["results"]["0"]["resumed_from_step"], 0);
    let w = warnings(&report);
    assert!(
        w.iter().any(|w| w.contains("training starts from step 0")),
        "{w:?}"
    );
    let none = events_named(&dir.join("runs/third"), "checkpoint_none_usable");
    assert_eq!(none.len(), 1, "{none:?}");
}

#[test]
fn another_trainings_checkpoints_are_refused_unless_asked_for() {
    let dir = scratch("ident-other");
    let (out, _) = run_job(&dir, &job(&dir, 40, 7), "seed7", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);

    // Another seed, same folder: exit 7 before anything starts.
    let out = {
        let spec = job(&dir, 60, 8);
        wait_output(start_run(&dir, &spec, "seed8", &[], &["-q"]), T)
    };
    assert_eq!(out.code(), 7, "{}", out.stderr);
    for want in [
        "holds step 40 of another training",
        "seed: job 8, checkpoint 7",
        "checkpoint.allow_identity_mismatch",
    ] {
        assert!(out.stderr.contains(want), "{want:?} not in {}", out.stderr);
    }
    assert!(!dir.join("runs/seed8").exists(), "nothing may start");

    // On purpose: it starts from those weights and the report says so.
    let (out, report) = run_job(
        &dir,
        &job(&dir, 60, 8),
        "seed8-adopt",
        &[],
        &["-q", "--set", "checkpoint.allow_identity_mismatch=true"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(report["results"]["0"]["resumed_from_step"], 40);
    let w = warnings(&report);
    assert!(
        w.iter().any(|w| w.contains("another training on purpose")
            && w.contains("seed: job 8, checkpoint 7")),
        "{w:?}"
    );
}

#[test]
fn a_job_already_done_runs_nothing() {
    let dir = scratch("ident-done");
    let (out, _) = run_job(&dir, &job(&dir, 30, 7), "once", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let out = wait_output(
        start_run(&dir, &job(&dir, 30, 7), "twice", &[], &["--json"]),
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("already complete at step 30"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("NaN") && !out.stdout.contains("NaN"),
        "{}",
        out.stdout
    );
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["status"], "already-complete");
    assert_eq!(v["step"], 30);
    assert!(!dir.join("runs/twice").exists());
    // `--resume` of the finished run: the same answer.
    let out = ringmaster(
        &dir,
        &[
            "run",
            "--resume",
            "runs/once",
            "--log-dir",
            "runs",
            "--run-id",
            "again",
        ],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("already complete at step 30"),
        "{}",
        out.stderr
    );
}

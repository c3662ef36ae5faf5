//! Checkpoints and resume, with real processes: a run that loses a worker
//! mid-way restarts from the newest committed checkpoint and ends with
//! exactly the weights of an uninterrupted run; Python's safetensors opens
//! every shard.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn job(dir: &Path, ckpt: &str) -> Value {
    let mut spec = train_job("ck", 2, 2, 60);
    spec["checkpoint"] =
        json!({"dir": dir.join(ckpt).to_str().unwrap(), "every_steps": 10, "keep": 3});
    spec["recovery"] = json!({"max_restarts": 1, "grace_period_s": 2});
    spec
}

#[test]
fn a_crash_resumes_from_the_last_checkpoint_bit_identically() {
    let dir = scratch("ckpt");
    let (out, clean) = run_job(&dir, &job(&dir, "ck-clean"), "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(clean["results"]["0"]["checkpoints_written"], 6);
    let mut kept: Vec<String> = std::fs::read_dir(dir.join("ck-clean"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        vec!["step-0000000040", "step-0000000050", "step-0000000060"]
    );

    // Rank 1 dies at step 35 on the first attempt; the checkpoint of step 30
    // is the newest committed one.
    let mut spec = job(&dir, "ck-crash");
    spec["env"] = json!({"RINGMASTER_FAULT_AT_STEP": "35", "RINGMASTER_FAULT_RANK": "1"});
    let (out, crashed) = run_job(&dir, &spec, "crash", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(crashed["restarts"], 1);
    let failure = &crashed["attempts"][0]["failure"];
    assert_eq!(failure["rank"], 1);
    assert_eq!(failure["exit_code"], 74);
    for rank in ["0", "1", "2", "3"] {
        assert_eq!(
            crashed["results"][rank]["resumed_from_step"], 30,
            "rank {rank}"
        );
    }
    assert_eq!(
        crashed["summary"]["weights_sha256"], clean["summary"]["weights_sha256"],
        "the resumed run must end with the uninterrupted run's weights"
    );
    assert_eq!(crashed["summary"]["ranks_agree"], true);

    // Every shard opens in Python's safetensors with the recorded shapes.
    let Ok(pypath) = std::env::var("RINGMASTER_TEST_PYTHONPATH") else {
        eprintln!("SKIPPED the Python safetensors check: RINGMASTER_TEST_PYTHONPATH is not set (scripts/test.sh sets it)");
        return;
    };
    let ck = dir.join("ck-crash/step-0000000060");
    let manifest = read_json(&ck.join("manifest.json"));
    let script = r#"
import json, sys
from safetensors import safe_open
d = sys.argv[1]
m = json.load(open(d + "/manifest.json"))
n = 0
for name, t in m["tensors"].items():
    total = 0
    for p in t["pieces"]:
        with safe_open(d + "/" + p["file"], framework="numpy") as f:
            a = f.get_tensor(name)
            assert a.shape == (p["len"],), (a.shape, p)
            assert str(a.dtype) == "float32"
            total += a.shape[0]
            n += 1
    assert total == t["shape"][0]
print(n)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, ck.to_str().unwrap()])
        .env("PYTHONPATH", pypath)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pieces: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(pieces, 2 * 4, "two tensors in four shards: {manifest}");
}

/// Trials with SIGKILL of a random worker (or a notice) at a random point;
/// every trial must finish with the uninterrupted run's weights. The random
/// choices come from a fixed seed so a failure can be replayed.
#[test]
fn random_kills_and_notices_never_change_the_result() {
    let dir = scratch("trials");
    let steps = 600;
    let spec = |name: &str| {
        let mut s = train_job("trial", 2, 2, steps);
        // At least 1.2 s per run on any machine: the kill lands mid-run.
        s["workload"]["pace_ms"] = json!(2);
        s["checkpoint"] =
            json!({"dir": dir.join(name).to_str().unwrap(), "every_steps": 25, "keep": 2});
        s["recovery"] =
            json!({"max_restarts": 2, "grace_period_s": 2, "heartbeat_interval_s": 0.1});
        s
    };
    let (out, clean) = run_job(&dir, &spec("ck-clean"), "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let want = clean["summary"]["weights_sha256"].clone();
    // splitmix64: a tiny fixed-seed generator is enough to pick trial points.
    let mut state = 0x5eed_u64;
    let mut next = move |n: u64| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    };
    for trial in 0..4 {
        let notice = trial % 2 == 1;
        let at_step = 10 + 10 * next(9); // rank 0 logs every 10 steps
        let victim = next(4);
        let id = format!("t{trial}");
        let ck = format!("ck-{trial}");
        eprintln!(
            "trial {trial}: {} at step >= {at_step}",
            if notice {
                "notice to the launcher".to_string()
            } else {
                format!("SIGKILL rank {victim}")
            }
        );
        let child = start_run(&dir, &spec(&ck), &id, &[], &["-q"]);
        let run_dir = dir.join("runs").join(&id);
        wait_for("the trial's step", T, || {
            std::fs::read_to_string(run_dir.join("attempt-0/rank-0.log"))
                .ok()
                .filter(|l| l.contains(&format!("step {at_step}/")))
                .map(|_| ())
        });
        if notice {
            kill(child.id() as i32, libc::SIGUSR1);
            let out = wait_output(child, T);
            assert_eq!(out.code(), 8, "trial {trial}: {}", out.stderr);
            // Finish the run from the notice checkpoint.
            let (out, r) = resume_run(&dir, &id, T);
            assert_eq!(out.code(), 0, "trial {trial}: {}", out.stderr);
            assert_eq!(
                r["summary"]["weights_sha256"], want,
                "trial {trial} (notice at >= {at_step})"
            );
        } else {
            kill(worker_pid(&run_dir, victim as u32), libc::SIGKILL);
            let out = wait_output(child, T);
            assert_eq!(out.code(), 0, "trial {trial}: {}", out.stderr);
            let r = read_report(&run_dir.join("report.json"));
            assert!(
                r["restarts"].as_u64().unwrap() >= 1,
                "trial {trial}: the kill must have caused a restart: {r}"
            );
            assert_eq!(
                r["summary"]["weights_sha256"], want,
                "trial {trial} (SIGKILL rank {victim} at >= {at_step})"
            );
        }
    }
}

#[test]
fn async_checkpoints_resume_bit_identically_too() {
    let dir = scratch("ckpt-async");
    let (out, clean) = run_job(&dir, &job(&dir, "ck-clean"), "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let mut spec = job(&dir, "ck-async");
    spec["checkpoint"]["async_write"] = json!(true);
    spec["env"] = json!({"RINGMASTER_FAULT_AT_STEP": "35", "RINGMASTER_FAULT_RANK": "1"});
    let (out, r) = run_job(&dir, &spec, "async", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(r["restarts"], 1);
    // The step-30 write may still have been in flight when rank 1 died; then
    // step 20 is the newest committed one. Either way the result is exact,
    // and the dead attempt's half-written step-30 folder is gone at the end.
    let resumed = r["results"]["0"]["resumed_from_step"].as_u64().unwrap();
    assert!(resumed == 30 || resumed == 20, "resumed from {resumed}");
    assert_eq!(r["results"]["0"]["checkpoint_async"], true);
    assert_eq!(
        r["summary"]["weights_sha256"],
        clean["summary"]["weights_sha256"]
    );
    let mut kept: Vec<String> = std::fs::read_dir(dir.join("ck-async"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        vec!["step-0000000040", "step-0000000050", "step-0000000060"]
    );
}

/// A worker SIGKILLed halfway through writing its shard of the step-60
/// checkpoint: that checkpoint never commits, the one of step 40 stays
/// valid and is used, and the run ends with the uninterrupted weights.
#[test]
fn a_kill_during_a_checkpoint_write_falls_back_to_the_previous_one() {
    let dir = scratch("ckpt-killwrite");
    let mut clean = train_job("kw", 2, 2, 120);
    clean["checkpoint"] =
        json!({"dir": dir.join("ck-clean").to_str().unwrap(), "every_steps": 20, "keep": 3});
    let (out, want) = run_job(&dir, &clean, "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);

    let mut spec = clean.clone();
    spec["checkpoint"]["dir"] = json!(dir.join("ck").to_str().unwrap());
    spec["recovery"] = json!({"max_restarts": 0, "max_infra_restarts": 1, "grace_period_s": 2});
    spec["env"] = json!({"RINGMASTER_FAULT_AT_STEP": "60", "RINGMASTER_FAULT_RANK": "1",
                         "RINGMASTER_FAULT_MODE": "kill-mid-checkpoint"});
    let (out, r) = run_job(&dir, &spec, "killed", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let a = r["attempts"].as_array().unwrap();
    assert_eq!(a[0]["failure"]["rank"], 1, "{r}");
    assert_eq!(a[0]["failure"]["signal"], 9);
    assert_eq!(a[0]["failure_kind"], "infrastructure");
    let log = std::fs::read_to_string(dir.join("runs/killed/attempt-0/rank-1.log")).unwrap();
    assert!(
        log.contains("halfway through step-0000000060.tmp/"),
        "{log}"
    );
    for rank in ["0", "1", "2", "3"] {
        assert_eq!(r["results"][rank]["resumed_from_step"], 40, "rank {rank}");
    }
    assert_eq!(
        r["summary"]["weights_sha256"],
        want["summary"]["weights_sha256"]
    );
}

/// The disk fills up during a checkpoint (a 1.4 MB tmpfs in a private mount
/// namespace; each checkpoint of this model is 584 KB): the worker
/// fails with a clear "No space left on device", the checkpoints already
/// committed stay intact, and the run resumes from them exactly once there
/// is room again.
#[test]
fn a_full_disk_during_a_checkpoint_is_a_clear_error_and_loses_nothing() {
    let dir = scratch("ckpt-full");
    let mk = |ck: &str| {
        let mut s = train_job("full", 2, 1, 50);
        s["workload"]["hidden"] = json!(256);
        s["checkpoint"] =
            json!({"dir": dir.join(ck).to_str().unwrap(), "every_steps": 10, "keep": 2});
        s
    };
    let (out, want) = run_job(&dir, &mk("ck-clean"), "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    std::fs::write(
        dir.join("full.json"),
        serde_json::to_vec(&mk("ck")).unwrap(),
    )
    .unwrap();
    // Inside a private mount namespace: mount the small tmpfs on ck/, run
    // until the disk is full, save what ck/ holds, unmount, put it back on
    // the real disk and resume.
    let script = format!(
        r#"set -u
mkdir -p ck && mount -t tmpfs -o size=1400k tmpfs ck || exit 90
{rm} run full.json --log-dir runs --run-id full -q; echo "first=$?" > codes
cp -a ck saved && umount ck && cp -a saved/. ck/
{rm} run --resume runs/full --log-dir runs --run-id full-resumed -q; echo "second=$?" >> codes
"#,
        rm = ringmaster_bin().display()
    );
    in_private_mount_namespace(&dir, &script, T);
    let codes = std::fs::read_to_string(dir.join("codes")).expect("the script ran");
    assert_eq!(
        codes, "first=4\nsecond=0\n",
        "(exit 90: could not mount a tmpfs)"
    );
    let r = read_report(&dir.join("runs/full/report.json"));
    let err = r["attempts"][0]["failure"]["worker_error"]["message"]
        .as_str()
        .unwrap();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("step-0000000030.tmp"), "{err}");
    // The two committed checkpoints were intact; the resumed run took the
    // newer one and finished with the uninterrupted weights.
    let resumed = read_report(&dir.join("runs/full-resumed/report.json"));
    assert_eq!(resumed["results"]["0"]["resumed_from_step"], 20);
    assert_eq!(
        resumed["summary"]["weights_sha256"],
        want["summary"]["weights_sha256"]
    );
}

/// Preflight: a checkpoint folder that cannot be created, or whose file
/// system cannot hold one checkpoint, stops the run before any worker starts
/// (exit 7, naming checkpoint.dir); room for fewer than `keep` + 1 is a
/// warning in the report.
#[test]
fn the_checkpoint_folder_is_checked_before_anything_starts() {
    let dir = scratch("ckpt-preflight");
    std::fs::write(dir.join("a-file"), "x").unwrap();
    let mut spec = train_job("pf", 1, 2, 20);
    spec["checkpoint"] = json!({"dir": dir.join("a-file/ck").to_str().unwrap(), "every_steps": 10});
    let job = write_job(&dir, &spec);
    let out = ringmaster(
        &dir,
        &[
            "run",
            job.to_str().unwrap(),
            "--log-dir",
            "runs",
            "--run-id",
            "pf",
            "-q",
        ],
        T,
    );
    assert_eq!(out.code(), 7, "{}", out.stderr);
    assert!(
        out.stderr.contains("checkpoint.dir") && out.stderr.contains("a-file/ck: cannot create it"),
        "{}",
        out.stderr
    );
    assert!(
        !dir.join("runs/pf/attempt-0").exists(),
        "no worker was started"
    );

    // On small file systems: this model's checkpoint is 2.2 MB (272,644
    // parameters x 8 bytes).
    let mut spec = train_job("pf", 1, 2, 20);
    spec["workload"]["hidden"] = json!(512);
    spec["checkpoint"] =
        json!({"dir": dir.join("ck").to_str().unwrap(), "every_steps": 0, "keep": 2});
    std::fs::write(dir.join("pf.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    let script = format!(
        r#"set -u
mkdir -p ck && mount -t tmpfs -o size=1m tmpfs ck || exit 90
{rm} run pf.json --log-dir runs --run-id tiny -q 2> tiny.err; echo "tiny=$?" > codes
umount ck && mount -t tmpfs -o size=4m tmpfs ck || exit 90
{rm} run pf.json --log-dir runs --run-id small -q; echo "small=$?" >> codes
umount ck
"#,
        rm = ringmaster_bin().display()
    );
    in_private_mount_namespace(&dir, &script, T);
    let codes = std::fs::read_to_string(dir.join("codes")).unwrap();
    assert_eq!(
        codes, "tiny=7\nsmall=0\n",
        "(exit 90: could not mount a tmpfs)"
    );
    let err = std::fs::read_to_string(dir.join("tiny.err")).unwrap();
    assert!(
        err.contains("1.0 MB free, but one checkpoint of this job takes 2.2 MB"),
        "{err}"
    );
    assert!(!dir.join("runs/tiny/attempt-0").exists());
    let r = read_report(&dir.join("runs/small/report.json"));
    let w = r["warnings"].to_string();
    assert!(
        w.contains("keeping 2 checkpoints and writing one more takes"),
        "{w}"
    );
}

//! report.html in a real browser: Debian's Chromium (installed by
//! scripts/test.sh) opens the page a run wrote, headless, with no network;
//! the page raises no console message, its charts have the series and
//! points the run's figures give (counted from the DOM), the timeline has
//! the run's attempts, notice, replaced node and restart, and a screenshot
//! is kept in the run folder (report.png).

use ringmaster_suite::*;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// `chromium --headless` on `page` with `args`: (stdout, stderr).
fn chromium(page: &Path, args: &[&str]) -> (String, String) {
    let child = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "chromium is not installed: scripts/test.sh installs it (scripts/browser/install.sh)",
        );
    let out = wait_output(child, T);
    assert_eq!(out.code(), 0, "chromium: {}", out.stderr);
    (out.stdout, out.stderr)
}

/// The page's console messages, as Chromium logs them.
fn console(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

#[test]
fn report_html_opens_clean_in_chromium_with_every_chart_and_mark() {
    let dir = scratch("report-html");
    let mut spec = train_job("rh", 2, 2, 800);
    spec["workload"]["pace_ms"] = json!(5);
    spec["checkpoint"] = json!({"dir": dir.join("ck").to_str().unwrap(), "every_steps": 100});
    spec["recovery"] = json!({"heartbeat_interval_s": 0.2});
    spec["provider"] = json!({"kind": "sim", "cloud": "aws", "offer": "g5.2xlarge", "provisioning_delay_s": 0.3,
                              "notice_window_s": 5, "preemptions": [{"node": 1, "at_s": 2.5}]});
    let (out, r) = run_job(&dir, &spec, "rh", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(r["attempts"].as_array().unwrap().len(), 2, "{r}");
    let run_dir = dir.join("runs/rh");
    let page = run_dir.join("report.html");
    let samples = std::fs::read_to_string(run_dir.join("progress.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(samples >= 3, "{samples} samples");
    let (dom, err) = chromium(&page, &["--dump-dom"]);
    assert!(console(&err).is_empty(), "console: {:?}", console(&err));
    // Charts: the mean loss, 4 ranks' step rates, 4 ranks' steps, the bill.
    let series: Vec<(&str, usize)> = dom
        .split("<polyline class=\"series\"")
        .skip(1)
        .map(|s| {
            let name = s
                .split("data-name=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let n: usize = s
                .split("data-points=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (name, n)
        })
        .collect();
    assert_eq!(series.len(), 10, "{series:?}");
    assert!(series.iter().all(|(_, n)| *n >= 2), "{series:?}");
    assert_eq!(series.iter().filter(|(n, _)| *n == "rank 3").count(), 2);
    assert!(
        series.iter().any(|(n, _)| n.starts_with("cost")),
        "{series:?}"
    );
    let marks = |kind: &str| dom.matches(&format!("data-kind=\"{kind}\"")).count();
    assert_eq!(marks("attempt"), 2, "attempts");
    assert_eq!(marks("notice"), 1, "notice");
    assert_eq!(marks("node-replaced"), 1, "replaced node");
    assert_eq!(marks("restart"), 1, "restart");
    // Rank 0's commits (every 100 steps of 800).
    assert!(
        marks("checkpoint") >= 3,
        "checkpoints: {}",
        marks("checkpoint")
    );
    // A screenshot, kept with the run.
    let shot = run_dir.join("report.png");
    chromium(
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1000,1700",
            "--hide-scrollbars",
        ],
    );
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    // `ringmaster report` writes it again, the same.
    let before = std::fs::read_to_string(&page).unwrap();
    std::fs::remove_file(&page).unwrap();
    let again = ringmaster(&dir, &["report", "runs/rh"], T);
    assert_eq!(again.code(), 0, "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(&page).unwrap(), before);
    // The console check can fail: a page that logs an error is caught.
    let bad = dir.join("bad.html");
    std::fs::write(
        &bad,
        "<html><body><script>console.error('boom')</script></body></html>",
    )
    .unwrap();
    let (_, err) = chromium(&bad, &["--dump-dom"]);
    assert_eq!(console(&err).len(), 1, "{err}");
}

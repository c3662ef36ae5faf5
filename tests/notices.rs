//! The cloud notice watchers against a fake metadata service that speaks
//! the published formats (tests/fixtures/metadata.py): call by call, the
//! error cases, and end to end through the real binaries.

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime};
use worker::notices::{aws::Aws, azure::Azure, gcp::Gcp, WatchError, Watcher};

const T: Duration = Duration::from_secs(120);

fn requests(log: &Value, method: &str, path_prefix: &str) -> Vec<Value> {
    log["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == method && r["path"].as_str().unwrap().starts_with(path_prefix))
        .cloned()
        .collect()
}

fn seconds_from_now(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[test]
fn aws_imdsv2_token_notice_rebalance_and_expired_token() {
    let fake = FakeMetadata::start("aws", &[]);
    let mut w = Aws::new(fake.base.clone());
    assert_eq!(w.poll().unwrap(), vec![], "nothing pending: 404s");
    assert_eq!(w.token_fetches, 1);
    // The early warning first, then the two-minute notice.
    fake.control("rebalance", json!({}));
    let seen = w.poll().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(!seen[0].preempt && seen[0].source.contains("rebalance"));
    fake.control("notice", json!({"in_s": 120}));
    let seen = w.poll().unwrap();
    let notice = seen.iter().find(|s| s.preempt).expect("the notice");
    assert_eq!(notice.source, "aws spot/instance-action");
    assert!(
        notice.detail.starts_with("terminate at "),
        "{}",
        notice.detail
    );
    let left = seconds_from_now(notice.deadline.expect("deadline from `time`"));
    assert!((115.0..=121.0).contains(&left), "deadline {left} s away");
    // Tokens expire: the next GET answers 401, the watcher fetches a new
    // token and carries on.
    fake.control("expire_tokens", json!({}));
    assert!(w.poll().unwrap().iter().any(|s| s.preempt));
    assert_eq!(w.token_fetches, 2);
    let log = fake.log();
    assert!(!requests(&log, "GET", "/latest/meta-data/")
        .iter()
        .filter(|r| r["status"] == 401)
        .collect::<Vec<_>>()
        .is_empty());
    for put in requests(&log, "PUT", "/latest/api/token") {
        assert_eq!(
            put["headers"]["x-aws-ec2-metadata-token-ttl-seconds"],
            "21600"
        );
        assert!(put["headers"].get("x-forwarded-for").is_none());
    }
    for get in requests(&log, "GET", "/latest/meta-data/") {
        assert!(
            get["headers"]["x-aws-ec2-metadata-token"].is_string(),
            "{get}"
        );
    }
    // IMDS switched off: 403 stops the watcher with the reason.
    fake.control("refuse", json!({}));
    match Aws::new(fake.base.clone()).poll() {
        Err(WatchError::Fatal(m)) => assert!(m.contains("403") && m.contains("disabled"), "{m}"),
        other => panic!("expected a fatal 403, got {other:?}"),
    }
}

#[test]
fn gcp_long_poll_wakes_on_the_notice() {
    let fake = FakeMetadata::start("gcp", &[]);
    // The fake is faithful: no Metadata-Flavor header, 403.
    let resp = ureq::get(format!(
        "{}/computeMetadata/v1/instance/preempted",
        fake.base
    ))
    .config()
    .http_status_as_error(false)
    .build()
    .call()
    .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    let mut w = Gcp::new(fake.base.clone());
    assert!(w.paced());
    assert_eq!(w.poll().unwrap(), vec![], "FALSE at first");
    assert!(!w.paced(), "long polls from now on");
    // The notice arrives while the watcher is blocked in its long poll.
    let base = fake.base.clone();
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        ureq::post(format!("{base}/_fake/notice"))
            .send("{}")
            .unwrap();
    });
    let t0 = Instant::now();
    let seen = w.poll().unwrap();
    let waited = t0.elapsed();
    poster.join().unwrap();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].preempt && seen[0].source == "gcp instance/preempted");
    let left = seconds_from_now(seen[0].deadline.unwrap());
    assert!((25.0..=30.5).contains(&left), "GCP gives 30 s: {left}");
    // It was the long poll that returned (not a quick re-read), so the
    // watcher sent wait_for_change with the ETag it was given.
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    let log = fake.log();
    let polls = requests(
        &log,
        "GET",
        "/computeMetadata/v1/instance/preempted?wait_for_change=true&last_etag=",
    );
    assert_eq!(polls.len(), 1, "{log}");
    assert_eq!(polls[0]["headers"]["metadata-flavor"], "Google");
    // Unavailable: retried, not fatal.
    fake.control("refuse", json!({}));
    assert!(matches!(
        Gcp::new(fake.base.clone()).poll(),
        Err(WatchError::Retry(_))
    ));
}

#[test]
fn azure_scheduled_events_slow_first_call_own_vm_and_acknowledge() {
    let fake = FakeMetadata::start(
        "azure",
        &["--vm-name", "trainer-7", "--first-call-delay", "2"],
    );
    // Without `Metadata: true` the service answers 400.
    let resp = ureq::get(format!(
        "{}/metadata/scheduledevents?api-version=2020-07-01",
        fake.base
    ))
    .config()
    .http_status_as_error(false)
    .build()
    .call()
    .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    let mut w = Azure::new(fake.base.clone(), None);
    let t0 = Instant::now();
    assert_eq!(w.poll().unwrap(), vec![], "no events");
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "the slow first call was waited out"
    );
    // Another VM's preemption is not ours.
    fake.control("other_vm_event", json!({}));
    assert_eq!(w.poll().unwrap(), vec![]);
    fake.control("notice", json!({"in_s": 30}));
    let seen = w.poll().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].preempt && seen[0].source == "azure Preempt");
    let left = seconds_from_now(seen[0].deadline.expect("NotBefore"));
    assert!((27.0..=31.0).contains(&left), "NotBefore {left} s away");
    // Unchanged DocumentIncarnation: nothing new.
    assert_eq!(w.poll().unwrap(), vec![]);
    assert!(w.acknowledge().unwrap());
    let log = fake.log();
    let acks = log["acks"].as_array().unwrap();
    assert_eq!(acks.len(), 1);
    assert!(seen[0].detail.contains(acks[0].as_str().unwrap()));
    assert!(!w.acknowledge().unwrap(), "nothing left to acknowledge");
    // The VM name came from the instance metadata, with the header.
    let names = requests(&log, "GET", "/metadata/instance/compute/name");
    assert_eq!(names.len(), 1);
    assert_eq!(names[0]["headers"]["metadata"], "true");
    fake.control("refuse", json!({}));
    assert!(matches!(w.poll(), Err(WatchError::Fatal(_))));
}

/// A train job whose nodes watch `cloud`'s fake metadata service.
fn watched_job(dir: &std::path::Path, cloud: &str, base: &str, steps: u64) -> Value {
    let mut s = train_job("watched", 2, 2, steps);
    // Seconds of run after step 100 on any machine: the notice lands mid-run.
    s["workload"]["pace_ms"] = json!(2);
    s["checkpoint"] = json!({"dir": dir.join(format!("ck-{cloud}")).to_str().unwrap(), "every_steps": 50, "keep": 2});
    s["recovery"] = json!({"grace_period_s": 2, "heartbeat_interval_s": 0.1});
    let mut src = json!({"cloud": cloud, "endpoint": base});
    if cloud == "azure" {
        src["vm_name"] = json!("vm-under-test");
    }
    s["notices"] = json!({"watch": [src], "poll_interval_ms": 100});
    s
}

/// For each cloud: the notice appears mid-run, a watcher sees it, every rank
/// stops at one agreed step with a checkpoint, the launcher exits 8 naming
/// the source, and `--resume` finishes with the uninterrupted weights.
#[test]
fn a_cloud_notice_stops_the_run_at_an_agreed_step_and_resume_is_exact() {
    let dir = scratch("notices-e2e");
    let steps = 1000;
    let mut clean = train_job("watched", 2, 2, steps);
    clean["checkpoint"] =
        json!({"dir": dir.join("ck-clean").to_str().unwrap(), "every_steps": 50, "keep": 2});
    let (out, r) = run_job(&dir, &clean, "clean", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let want = r["summary"]["weights_sha256"].clone();

    for cloud in ["aws", "gcp", "azure"] {
        let fake = FakeMetadata::start(cloud, &[]);
        let id = format!("run-{cloud}");
        let child = start_run(
            &dir,
            &watched_job(&dir, cloud, &fake.base, steps),
            &id,
            &[],
            &["-q"],
        );
        let run_dir = dir.join("runs").join(&id);
        wait_for("step 100", T, || {
            std::fs::read_to_string(run_dir.join("attempt-0/rank-0.log"))
                .ok()
                .filter(|l| l.contains("step 100/"))
        });
        fake.control("notice", json!({"in_s": 30}));
        let out = wait_output(child, T);
        assert_eq!(out.code(), 8, "{cloud}: {}", out.stderr);
        let received = events_named(&run_dir, "notice_received");
        assert_eq!(received.len(), 1, "{cloud}: {received:?}");
        let source = received[0]["source"].as_str().unwrap();
        assert!(source.starts_with(cloud), "{source}");
        assert!(
            received[0]["deadline"].is_string(),
            "{cloud}: the cloud's deadline is kept"
        );
        // Only the first worker of each node watches.
        assert!([0, 2].contains(&received[0]["rank"].as_u64().unwrap()));
        let handled = &events_named(&run_dir, "notice_handled")[0];
        assert_eq!(handled["checkpointed"], true, "{cloud}: {handled}");
        assert_eq!(handled["deadline_met"], true);
        assert_eq!(handled["source"], source);
        let report = read_report(&run_dir.join("report.json"));
        assert!(
            report["message"].as_str().unwrap().contains(source),
            "{report}"
        );
        let stop: Vec<u64> = (0..4)
            .map(|r| {
                report["results"][r.to_string()]["preempted_at_step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert!(
            stop.iter().all(|s| *s == stop[0]),
            "{cloud}: one agreed step: {stop:?}"
        );
        if cloud == "azure" {
            // Acknowledged once the checkpoint was committed, by each
            // node's watcher.
            let log = fake.log();
            assert!(!log["acks"].as_array().unwrap().is_empty(), "{log}");
        }
        // The resumed run would be on a new machine; here the old one's
        // service goes away (its watcher retries quietly).
        drop(fake);
        let (out, r) = resume_run(&dir, &id, T);
        assert_eq!(out.code(), 0, "{cloud}: {}", out.stderr);
        assert_eq!(r["results"]["0"]["resumed_from_step"], stop[0]);
        assert_eq!(r["summary"]["weights_sha256"], want, "{cloud}");
    }
}

/// A watcher that cannot work says why in the worker's log and the run
/// goes on; an early warning is recorded without stopping anything.
#[test]
fn a_refusing_service_or_an_early_warning_does_not_stop_the_run() {
    let dir = scratch("notices-soft");
    let fake = FakeMetadata::start("aws", &[]);
    fake.control("refuse", json!({}));
    let (out, r) = run_job(
        &dir,
        &watched_job(&dir, "aws", &fake.base, 200),
        "refused",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(r["status"], "succeeded");
    let log = std::fs::read_to_string(dir.join("runs/refused/attempt-0/rank-0.log")).unwrap();
    assert!(
        log.contains("notice watcher aws: stopped") && log.contains("403"),
        "{log}"
    );

    let fake = FakeMetadata::start("aws", &[]);
    fake.control("rebalance", json!({}));
    let (out, r) = run_job(
        &dir,
        &watched_job(&dir, "aws", &fake.base, 300),
        "warned",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(r["status"], "succeeded");
    let warned = events_named(&dir.join("runs/warned"), "early_warning");
    assert!(!warned.is_empty(), "rebalance recommendation recorded");
    assert!(warned[0]["source"].as_str().unwrap().contains("rebalance"));
}

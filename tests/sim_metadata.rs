//! The simulator's per-node metadata service (launcher::sim::metadata)
//! against the workers' real notice watchers, for each cloud: the same
//! watchers that the fake in tests/fixtures/metadata.py checks against the
//! published formats.

use launcher::sim::metadata::{Cloud, MetadataServer};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};
use worker::notices::{aws::Aws, azure::Azure, gcp::Gcp, Watcher};

fn in_s(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn status(url: &str) -> u16 {
    ureq::get(url)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn aws_service_serves_the_watcher() {
    let m = MetadataServer::start(Cloud::Aws, Ipv4Addr::new(127, 0, 0, 5), "node-3").unwrap();
    assert!(m.base_url().starts_with("http://127.0.0.5:"));
    assert_eq!(m.env()[0].0, "AWS_EC2_METADATA_SERVICE_ENDPOINT");
    // No token: 401.
    assert_eq!(
        status(&format!(
            "{}/latest/meta-data/spot/instance-action",
            m.base_url()
        )),
        401
    );
    let mut w = Aws::new(m.base_url());
    assert_eq!(w.poll().unwrap(), vec![]);
    m.rebalance();
    let seen = w.poll().unwrap();
    assert!(seen.len() == 1 && !seen[0].preempt, "{seen:?}");
    m.preempt(SystemTime::now() + Duration::from_secs(120));
    let seen = w.poll().unwrap();
    let n = seen.iter().find(|s| s.preempt).expect("notice");
    assert!((118.0..=121.0).contains(&in_s(n.deadline.unwrap())));
    m.expire_tokens();
    assert!(w.poll().unwrap().iter().any(|s| s.preempt));
    assert_eq!(w.token_fetches, 2, "a new token after the 401");
}

#[test]
fn gcp_service_long_poll_wakes_the_watcher() {
    let m = MetadataServer::start(Cloud::Gcp, Ipv4Addr::new(127, 0, 0, 6), "node-4").unwrap();
    assert_eq!(m.env()[0].0, "GCE_METADATA_HOST");
    assert_eq!(
        status(&format!(
            "{}/computeMetadata/v1/instance/preempted",
            m.base_url()
        )),
        403
    );
    let mut w = Gcp::new(format!("http://{}", m.env()[0].1));
    assert_eq!(w.poll().unwrap(), vec![]);
    let m = std::sync::Arc::new(m);
    let m2 = m.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        m2.preempt(SystemTime::now() + Duration::from_secs(30));
    });
    let t0 = Instant::now();
    let seen = w.poll().unwrap();
    t.join().unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "returned from the long poll"
    );
    assert!(seen.len() == 1 && seen[0].preempt && seen[0].source == "gcp instance/preempted");
}

#[test]
fn azure_service_names_the_vm_and_takes_the_acknowledgement() {
    let m = MetadataServer::start(Cloud::Azure, Ipv4Addr::new(127, 0, 0, 7), "sim-vm-9").unwrap();
    assert_eq!(
        status(&format!(
            "{}/metadata/scheduledevents?api-version=2020-07-01",
            m.base_url()
        )),
        400
    );
    let mut w = Azure::new(m.base_url(), None);
    assert_eq!(w.poll().unwrap(), vec![]);
    m.preempt(SystemTime::now() + Duration::from_secs(30));
    let seen = w.poll().unwrap();
    assert!(
        seen.len() == 1 && seen[0].preempt && seen[0].source == "azure Preempt",
        "{seen:?}"
    );
    assert!((27.0..=31.0).contains(&in_s(seen[0].deadline.unwrap())));
    assert!(w.acknowledge().unwrap());
    let acks = m.acknowledged();
    assert_eq!(acks.len(), 1);
    assert!(seen[0].detail.contains(&acks[0]));
    // The event is gone once acknowledged.
    assert_eq!(w.poll().unwrap(), vec![]);
}

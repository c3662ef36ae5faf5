//! The launcher's rendezvous under bad input, while a real job runs on it:
//! garbage, oversized frames, wrong token, wrong version, stale round,
//! duplicate member, unknown member, silence. Each bad connection gets one
//! clear refusal; the job still finishes cleanly.

use proto::wire::{self, ErrorKind, Request, Response, PROTOCOL_VERSION};
use ringmaster_suite::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn connect(endpoint: &str) -> TcpStream {
    let s = TcpStream::connect(endpoint).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

fn refusal(s: &mut TcpStream) -> ErrorKind {
    match wire::read_frame::<Response>(s) {
        Ok(Response::Error { kind, .. }) => kind,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn join(token: &str, round: u64, node: u32, local: u32) -> Request {
    Request::Join {
        version: PROTOCOL_VERSION,
        token: token.into(),
        round,
        node_rank: node,
        local_rank: local,
        ring_addr: "127.0.0.2:1".into(),
        pid: 1,
        preflight: None,
    }
}

#[test]
fn bad_clients_are_refused_and_the_job_is_unharmed() {
    let dir = scratch("rdzv-bad");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let spec = json!({"name": "rb", "resources": {"nodes": 2, "devices_per_node": 1},
                      "workload": {"kind": "command", "argv": ["python3", fixture("sleeper.py").to_str().unwrap()]},
                      "env": {"OUT_DIR": out.to_str().unwrap(), "SLEEP_S": "50"}});
    let job = write_job(&dir, &spec);
    let child = Command::new(ringmaster_bin())
        .args([
            "run",
            job.to_str().unwrap(),
            "--log-dir",
            "runs",
            "--run-id",
            "rb",
            "-q",
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_dir = dir.join("runs/rb");
    wait_for("rendezvous", T, || {
        (!events_named(&run_dir, "rendezvous_complete").is_empty()).then_some(())
    });
    let endpoint = events_named(&run_dir, "run_started")[0]["rendezvous"]
        .as_str()
        .unwrap()
        .to_string();
    // The token, as the launcher handed it to a worker.
    let pid = events_named(&run_dir, "worker_started")[0]["pid"]
        .as_i64()
        .unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let token = environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("RINGMASTER_RDZV_TOKEN="))
        .unwrap()
        .to_string();

    // Garbage JSON.
    let mut s = connect(&endpoint);
    s.write_all(&[0, 0, 0, 5]).unwrap();
    s.write_all(b"hello").unwrap();
    assert_eq!(refusal(&mut s), ErrorKind::Malformed);
    // An oversized frame is refused without being read.
    let mut s = connect(&endpoint);
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert_eq!(refusal(&mut s), ErrorKind::TooLarge);
    // Valid JSON of the wrong shape.
    let mut s = connect(&endpoint);
    let body = br#"{"type":"join","version":1}"#;
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
    assert_eq!(refusal(&mut s), ErrorKind::Malformed);
    // Wrong token, wrong version, stale round, unknown and duplicate member.
    let cases = [
        (join("not-the-token", 0, 0, 0), ErrorKind::BadToken),
        (
            Request::Join {
                version: 99,
                token: token.clone(),
                round: 0,
                node_rank: 0,
                local_rank: 0,
                ring_addr: String::new(),
                pid: 1,
                preflight: None,
            },
            ErrorKind::BadVersion,
        ),
        (join(&token, 5, 0, 0), ErrorKind::StaleRound),
        (join(&token, 0, 7, 0), ErrorKind::UnknownMember),
        (join(&token, 0, 1, 0), ErrorKind::Duplicate),
        (Request::Barrier { name: "x".into() }, ErrorKind::Protocol),
        (
            Request::HeartbeatHello {
                version: PROTOCOL_VERSION,
                token: "bad".into(),
                round: 0,
                node_rank: 0,
                local_rank: 0,
            },
            ErrorKind::BadToken,
        ),
    ];
    for (req, want) in cases {
        let mut s = connect(&endpoint);
        wire::write_frame(&mut s, &req).unwrap();
        assert_eq!(refusal(&mut s), want, "for {req:?}");
    }
    // A half-written frame followed by a hang-up, and a silent connection.
    let mut s = connect(&endpoint);
    s.write_all(&[0, 0, 1, 0, b'{']).unwrap();
    drop(s);
    let silent = connect(&endpoint);
    // A heartbeat connection that then sends something else.
    let mut s = connect(&endpoint);
    wire::write_frame(
        &mut s,
        &Request::HeartbeatHello {
            version: PROTOCOL_VERSION,
            token: token.clone(),
            round: 0,
            node_rank: 0,
            local_rank: 0,
        },
    )
    .unwrap();
    assert!(matches!(
        wire::read_frame::<Response>(&mut s),
        Ok(Response::Ok)
    ));
    wire::write_frame(
        &mut s,
        &Request::KvSet {
            key: "k".into(),
            value: "v".into(),
        },
    )
    .unwrap();
    assert_eq!(refusal(&mut s), ErrorKind::Protocol);
    let mut buf = [0u8; 1];
    assert_eq!(
        s.read(&mut buf).unwrap_or(0),
        0,
        "connection closed after the refusal"
    );

    // The job is unharmed: let it finish.
    std::fs::write(out.join("go"), b"").unwrap();
    let res = wait_output(child, T);
    drop(silent);
    assert_eq!(res.code(), 0, "{}", res.stderr);
    let refused = events_named(&run_dir, "rendezvous_refused");
    assert!(
        refused.len() >= 10,
        "every refusal is an event: {refused:?}"
    );
}

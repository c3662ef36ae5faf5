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

/// The run's rendezvous address, once every worker has joined.
fn endpoint_when_up(run_dir: &std::path::Path) -> String {
    wait_for("rendezvous", T, || {
        (!events_named(run_dir, "rendezvous_complete").is_empty()).then_some(())
    });
    events_named(run_dir, "run_started")[0]["rendezvous"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A scratch folder and a job of `nodes` sleepers (tests/fixtures/sleeper.py)
/// that wait up to 50 s for `<out>/go`: a run that stays up while a test
/// talks to its rendezvous.
fn sleeper_job(
    tag: &str,
    name: &str,
    nodes: u32,
) -> (std::path::PathBuf, std::path::PathBuf, serde_json::Value) {
    let dir = scratch(tag);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let spec = json!({"name": name, "resources": {"nodes": nodes, "devices_per_node": 1},
                      "workload": {"kind": "command", "argv": ["python3", fixture("sleeper.py").to_str().unwrap()]},
                      "env": {"OUT_DIR": out.to_str().unwrap(), "SLEEP_S": "50"}});
    (dir, out, spec)
}

#[test]
fn bad_clients_are_refused_and_the_job_is_unharmed() {
    let (dir, out, spec) = sleeper_job("rdzv-bad", "rb", 2);
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
    let endpoint = endpoint_when_up(&run_dir);
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

/// The launcher's resident memory, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb / 1024.0
}

fn connect_from(source: &str, endpoint: &str) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(
        &format!("{source}:0")
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )?;
    s.connect(&endpoint.parse::<std::net::SocketAddr>().unwrap().into())?;
    Ok(s.into())
}

#[test]
fn a_flood_of_strangers_cannot_make_the_launcher_hold_memory() {
    let (dir, out, spec) = sleeper_job("rdzv-flood", "fl", 1);
    let child = start_run(&dir, &spec, "fl", &[], &["-q"]);
    let launcher = child.id();
    let run_dir = dir.join("runs/fl");
    let endpoint = endpoint_when_up(&run_dir);
    let before = rss_mib(launcher);
    // 3 sources x 150 connections, each announcing a frame of just under
    // 1 MiB (the largest an authenticated peer may send) and sending all
    // of it but one byte, then holding on: 450 MiB if the launcher read it.
    let announced = proto::wire::MAX_FRAME_BYTES - 1;
    let body = vec![b' '; announced as usize - 1];
    let mut held = Vec::new();
    for src in ["127.0.0.21", "127.0.0.22", "127.0.0.23"] {
        for _ in 0..150 {
            let mut s = connect_from(src, &endpoint).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(&announced.to_be_bytes()).unwrap();
            // Refused unread: the rest may not be accepted.
            let _ = s.write_all(&body);
            held.push(s);
        }
    }
    // And connections announcing a frame just under the greeting limit,
    // half sent: held until the greeting timeout, a few kB each.
    let greeting = (launcher::rendezvous::MAX_GREETING_BYTES - 1) as usize;
    for _ in 0..100 {
        let mut s = connect_from("127.0.0.26", &endpoint).unwrap();
        s.write_all(&(greeting as u32).to_be_bytes()).unwrap();
        s.write_all(&vec![b' '; greeting / 2]).unwrap();
        held.push(s);
    }
    // And a frame that would take 1 MiB before: refused unread.
    let mut big = connect_from("127.0.0.24", &endpoint).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    big.write_all(&(proto::wire::MAX_FRAME_BYTES - 1).to_be_bytes())
        .unwrap();
    assert_eq!(refusal(&mut big), ErrorKind::TooLarge);
    // One source past its share: closed without a word.
    let mut one = Vec::new();
    for _ in 0..launcher::rendezvous::MAX_UNAUTHENTICATED_PER_SOURCE + 40 {
        if let Ok(s) = connect_from("127.0.0.25", &endpoint) {
            one.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = rss_mib(launcher);
    assert!(
        during - before < 64.0,
        "the launcher grew from {before:.0} MiB to {during:.0} MiB under {} idle connections",
        held.len() + one.len()
    );
    let mut closed = 0;
    for s in one.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        if matches!(s.read(&mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert!(
        closed >= 40,
        "{closed} of the connections past the per-source limit were closed"
    );
    // The held ones time out (a few seconds) and are counted, not logged
    // one by one.
    drop(held);
    drop(one);
    let summary = wait_for("a refusal summary", T, || {
        events_named(&run_dir, "rendezvous_refused_summary")
            .into_iter()
            .map(|e| e["total"].as_u64().unwrap())
            .max()
            .filter(|t| *t > 400)
    });
    let logged = events_named(&run_dir, "rendezvous_refused").len() as u64;
    assert!(
        logged <= launcher::rendezvous::REFUSALS_LOGGED,
        "{logged} refusals logged one by one"
    );
    assert!(summary > 400, "{summary}");
    // The job is unharmed.
    std::fs::write(out.join("go"), b"").unwrap();
    let res = wait_output(child, T);
    assert_eq!(res.code(), 0, "{}", res.stderr);
}

//! Helpers for the end-to-end tests in tests/: locating the built binaries,
//! scratch directories, running the launcher with a time bound, reading the
//! run's report and events, and checking which processes are still alive.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// target/<profile>/ (the test binary lives in target/<profile>/deps/).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn ringmaster_bin() -> PathBuf {
    let p = bin_dir().join("ringmaster");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn worker_bin() -> PathBuf {
    let p = bin_dir().join("ringmaster-worker");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The repository root (for configs/ and tests/fixtures/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests").join("fixtures").join(name)
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "ringmaster-test-{}-{}-{}",
        tag,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Write a job spec into `dir` and return its path.
pub fn write_job(dir: &Path, spec: &Value) -> PathBuf {
    let p = dir.join("job.json");
    std::fs::write(&p, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
    p
}

pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// `ringmaster <args>` in `cwd`, killed (and the test failed) after `limit`.
pub fn ringmaster(cwd: &Path, args: &[&str], limit: Duration) -> Outcome {
    ringmaster_at(&ringmaster_bin(), cwd, args, limit)
}

/// The same, with the `ringmaster` binary at `bin` (a wheel's).
pub fn ringmaster_at(bin: &Path, cwd: &Path, args: &[&str], limit: Duration) -> Outcome {
    let child = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringmaster");
    wait_output(child, limit)
}

pub fn wait_output(mut child: Child, limit: Duration) -> Outcome {
    use std::io::Read;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let Some(status) = wait_bounded(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "ringmaster did not finish within {limit:?}; stderr so far: {}",
            t_err.join().unwrap()
        );
    };
    Outcome {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Poll `f` until it returns Some, or panic after `limit` naming `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// report.json, read back strictly as `proto::report::Report` (a field
/// the type does not name, or one of the wrong shape, fails the test), and
/// returned as JSON for the assertions.
pub fn read_report(path: &Path) -> Value {
    let v = read_json(path);
    if let Err(e) = serde_json::from_value::<proto::report::Report>(v.clone()) {
        panic!("{} is not a report: {e}\n{v:#}", path.display());
    }
    v
}

/// events.jsonl, every line read back strictly as a `proto::events::Line`
/// (an event or field the types do not name fails the test), returned as
/// JSON for the assertions.
pub fn events(run_dir: &Path) -> Vec<Value> {
    let p = run_dir.join("events.jsonl");
    let text = std::fs::read_to_string(&p).unwrap_or_default();
    // A run still writing may have a last line without its newline yet:
    // only whole lines are read.
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    whole
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            if let Err(e) = proto::events::Line::parse(l) {
                panic!("{}: {e}", p.display());
            }
            serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}"))
        })
        .collect()
}

pub fn events_named(run_dir: &Path, name: &str) -> Vec<Value> {
    events(run_dir)
        .into_iter()
        .filter(|e| e["event"] == name)
        .collect()
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Kill a process we started (cleanup after a failed assertion).
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Start `ringmaster run <spec> --run-id <id>` quietly in `dir`, logging to
/// `dir/runs`, with extra environment and arguments.
pub fn start_run(
    dir: &Path,
    spec: &Value,
    id: &str,
    extra_env: &[(&str, &str)],
    extra_args: &[&str],
) -> Child {
    let job = dir.join(format!("{id}.json"));
    std::fs::write(&job, serde_json::to_vec(spec).unwrap()).unwrap();
    let mut c = Command::new(ringmaster_bin());
    c.args([
        "run",
        job.to_str().unwrap(),
        "--log-dir",
        "runs",
        "--run-id",
        id,
    ])
    .args(extra_args)
    .current_dir(dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    c.spawn().expect("start ringmaster")
}

/// Run to completion (bounded by `limit`); returns the outcome and report.json.
pub fn run_job(
    dir: &Path,
    spec: &Value,
    id: &str,
    extra_env: &[(&str, &str)],
    extra_args: &[&str],
    limit: Duration,
) -> (Outcome, Value) {
    let out = wait_output(start_run(dir, spec, id, extra_env, extra_args), limit);
    let report = read_report(&dir.join("runs").join(id).join("report.json"));
    (out, report)
}

/// The run (report.json) trained the model of an uninterrupted run whose
/// final loss was `want`, to within 1e-4 relative (an elastic run adds its
/// sums in another order: not to the bit).
pub fn assert_same_model(report: &Value, want: f64) {
    let got = report["summary"]["final_loss"].as_f64().unwrap();
    assert!((got - want).abs() / want.abs() < 1e-4, "{got} vs {want}");
}

/// A run whose every node's agent joined once (nodes 0..nodes) and whose
/// `workers` workers of its first attempt were all started by them.
pub fn assert_agents_started_every_worker(run_dir: &Path, nodes: u64, workers: usize) {
    let mut agents: Vec<u64> = events_named(run_dir, "agent_joined")
        .iter()
        .map(|e| e["node"].as_u64().unwrap())
        .collect();
    agents.sort();
    assert_eq!(agents, (0..nodes).collect::<Vec<_>>());
    let started = events_named(run_dir, "worker_started");
    assert_eq!(started.len(), workers, "{started:?}");
    assert!(started.iter().all(|e| e["by_agent"] == true), "{started:?}");
}

/// Each attempt's world size, from report.json.
pub fn attempt_worlds(report: &Value) -> Vec<u64> {
    report["attempts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| a["world_size"].as_u64().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// A small train job of the given shape.
pub fn train_job(name: &str, nodes: u32, per_node: u32, steps: u64) -> Value {
    serde_json::json!({
        "name": name,
        "resources": {"nodes": nodes, "devices_per_node": per_node},
        "workload": {"kind": "train", "steps": steps, "input_dim": 16, "hidden": 32, "layers": 3, "output_dim": 4,
                     "batch_per_rank": 16, "lr": 0.05, "seed": 7, "log_every": 10},
        "threads_per_worker": 1,
        "collective": {"timeout_s": 20}
    })
}

/// The fake cloud metadata service (tests/fixtures/metadata.py) for one
/// cloud, on a free loopback port; stopped when dropped.
pub struct FakeMetadata {
    child: Child,
    pub base: String,
    _dir: PathBuf,
}

impl FakeMetadata {
    pub fn start(cloud: &str, extra: &[&str]) -> FakeMetadata {
        let dir = scratch(&format!("fake-{cloud}"));
        let port_file = dir.join("port");
        let child = Command::new("python3")
            .arg(fixture("metadata.py"))
            .args(["--cloud", cloud, "--port-file", port_file.to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("start python3 tests/fixtures/metadata.py");
        let port = wait_for("the fake metadata service", Duration::from_secs(20), || {
            std::fs::read_to_string(&port_file).ok()
        });
        FakeMetadata {
            child,
            base: format!("http://127.0.0.1:{}", port.trim()),
            _dir: dir,
        }
    }

    /// Trigger one of the fake's controls (notice, rebalance, expire_tokens,
    /// refuse, other_vm_event).
    pub fn control(&self, what: &str, body: Value) {
        let resp = ureq::post(format!("{}/_fake/{what}", self.base))
            .send(body.to_string().as_str())
            .expect("fake control");
        assert_eq!(resp.status().as_u16(), 200, "control {what}");
    }

    /// Every request the fake answered, the acknowledgements it received,
    /// and when the last notice was posted.
    pub fn log(&self) -> Value {
        let mut resp = ureq::get(format!("{}/_fake/log", self.base))
            .call()
            .expect("fake log");
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    }
}

impl Drop for FakeMetadata {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of rank `rank`'s worker in attempt 0 (its `worker_started`).
pub fn worker_pid(run_dir: &Path, rank: u32) -> i32 {
    events_named(run_dir, "worker_started")
        .iter()
        .find(|e| e["rank"] == rank && e["attempt"] == 0)
        .and_then(|e| e["pid"].as_i64())
        .unwrap_or_else(|| panic!("no worker_started with a pid for rank {rank}")) as i32
}

/// `ringmaster run --resume runs/<id> --run-id <id>-resumed -q` in `dir`;
/// returns the outcome and the resumed run's report.json.
pub fn resume_run(dir: &Path, id: &str, limit: Duration) -> (Outcome, Value) {
    resume_run_at(&ringmaster_bin(), dir, id, limit)
}

/// The same, with the `ringmaster` binary at `bin` (a wheel's).
pub fn resume_run_at(bin: &Path, dir: &Path, id: &str, limit: Duration) -> (Outcome, Value) {
    let resumed = format!("{id}-resumed");
    let out = ringmaster_at(
        bin,
        dir,
        &[
            "run",
            "--resume",
            &format!("runs/{id}"),
            "--log-dir",
            "runs",
            "--run-id",
            &resumed,
            "-q",
        ],
        limit,
    );
    let report = read_report(&dir.join("runs").join(&resumed).join("report.json"));
    (out, report)
}

/// Run a shell script in `dir` inside a private mount namespace (`unshare
/// --mount`), so the file systems it mounts (a small tmpfs) vanish with it;
/// bounded by `limit`, and it must exit 0.
pub fn in_private_mount_namespace(dir: &Path, script: &str, limit: Duration) {
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .current_dir(dir)
        .spawn()
        .expect("unshare (util-linux)");
    let status = wait_bounded(&mut child, limit).expect("the script ends in time");
    assert!(
        status.success(),
        "script in a private mount namespace: {status:?}"
    );
}

/// `ringmaster validate` on `spec` fails with exit 3 and names `field`.
pub fn assert_spec_error(dir: &Path, spec: &Value, field: &str) {
    let path = write_job(dir, spec);
    let out = ringmaster(
        dir,
        &["validate", path.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), 3, "{field}: {}", out.stderr);
    assert!(
        out.stderr.contains(field) || out.stdout.contains(field),
        "{field}: {}{}",
        out.stdout,
        out.stderr
    );
}

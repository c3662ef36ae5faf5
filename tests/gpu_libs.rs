//! The GPU libraries where a PyTorch machine has them (the pip wheels:
//! NCCL's libnccl.so.2, CUDA 13's cuBLAS in nvidia/cu13/lib), found by the
//! launcher itself and loadable by a worker under the environment the
//! launcher gives it: no GPU needed to load them, and nothing here sets
//! LD_LIBRARY_PATH. scripts/test.sh installs the wheels into a folder
//! (`RINGMASTER_TEST_GPU_LIBS`) that these tests put on PYTHONPATH, as a
//! `pip install` into the user's Python would.

use ringmaster_suite::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn wheels() -> PathBuf {
    let dir = std::env::var("RINGMASTER_TEST_GPU_LIBS").expect(
        "RINGMASTER_TEST_GPU_LIBS is not set: run the suite with scripts/test.sh, which pip-installs the NCCL and cuBLAS wheels",
    );
    PathBuf::from(dir)
}

/// `ringmaster doctor --json` with exactly this environment for the
/// library search (no LD_LIBRARY_PATH).
fn doctor(env: &[(&str, String)]) -> Value {
    let mut c = Command::new(ringmaster_bin());
    c.args(["doctor", "--json"])
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("PYTHONPATH")
        .env_remove("RINGMASTER_NCCL_LIB")
        .env_remove("RINGMASTER_CUBLAS_LIB")
        .env_remove("RINGMASTER_CUBLASLT_LIB")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = wait_output(c.spawn().unwrap(), Duration::from_secs(120));
    let d: Value = serde_json::from_str(&out.stdout).unwrap();
    // doctor's exit: 6 when a verdict is an error (no driver here), else 0.
    let error = d["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["level"] == "error");
    assert_eq!(out.code(), if error { 6 } else { 0 }, "{}", out.stderr);
    d
}

fn worker_lib<'a>(d: &'a Value, lib: &str) -> &'a Value {
    d["worker_libs"]
        .as_array()
        .expect("doctor asked a worker")
        .iter()
        .find(|c| c["lib"] == lib)
        .unwrap()
}

#[test]
fn a_worker_loads_the_wheels_through_the_launchers_environment() {
    let w = wheels();
    let d = doctor(&[("PYTHONPATH", w.display().to_string())]);
    let nccl = w.join("nvidia/nccl/lib/libnccl.so.2");
    let cublas = w.join("nvidia/cu13/lib/libcublas.so.13");
    let lt = w.join("nvidia/cu13/lib/libcublasLt.so.13");
    // Found where the wheels put them.
    assert_eq!(d["located"]["nccl"], nccl.to_str().unwrap(), "{d:#}");
    assert_eq!(d["located"]["cublas"], cublas.to_str().unwrap());
    assert_eq!(d["located"]["cublaslt"], lt.to_str().unwrap());
    // The launcher's own probe loaded them and names the files.
    assert_eq!(d["probe"]["nccl"]["present"], true);
    assert_eq!(d["probe"]["cublas"]["path"], cublas.to_str().unwrap());
    assert_eq!(d["probe"]["cublaslt"]["path"], lt.to_str().unwrap());
    assert!(
        d["probe"]["cublas"]["version"]
            .as_str()
            .unwrap()
            .starts_with("13."),
        "{d:#}"
    );
    // A worker process, under the LD_LIBRARY_PATH a run gives it, loads
    // all three by cudarc's names; NCCL makes a unique id.
    for (lib, file) in [("nccl", &nccl), ("cublas", &cublas), ("cublaslt", &lt)] {
        let c = worker_lib(&d, lib);
        assert_eq!(c["loaded"], true, "{lib}: {c}");
        let mapped = std::fs::canonicalize(c["path"].as_str().unwrap()).unwrap();
        assert_eq!(mapped, std::fs::canonicalize(file).unwrap(), "{lib}");
    }
    assert_eq!(worker_lib(&d, "nccl")["detail"], "ncclGetUniqueId ok");
    let verdicts = d["verdicts"].to_string();
    assert!(verdicts.contains("workers load NCCL"), "{verdicts}");
}

#[test]
fn without_the_wheels_nothing_is_claimed() {
    // The same machine with no Python packages and no settings: a worker
    // loads nothing, and doctor claims nothing (the control for the test
    // above: the loading comes from the launcher's environment).
    let d = doctor(&[("RINGMASTER_PYTHON", "/nonexistent/python".into())]);
    if d["located"]["nccl"].is_null() {
        assert_eq!(d["probe"]["nccl"]["present"], false, "{d:#}");
        assert_eq!(worker_lib(&d, "nccl")["loaded"], false);
    }
    if d["located"]["cublas"].is_null() {
        assert_eq!(worker_lib(&d, "cublas")["loaded"], false);
    }
}

#[test]
fn an_explicit_setting_finds_nccl_without_python() {
    let w = wheels();
    let dir = w.join("nvidia/nccl/lib");
    let d = doctor(&[
        ("RINGMASTER_PYTHON", "/nonexistent/python".into()),
        ("RINGMASTER_NCCL_LIB", dir.display().to_string()),
    ]);
    assert_eq!(
        d["located"]["nccl"],
        dir.join("libnccl.so.2").to_str().unwrap()
    );
    assert_eq!(worker_lib(&d, "nccl")["loaded"], true, "{d:#}");
    assert_eq!(worker_lib(&d, "nccl")["detail"], "ncclGetUniqueId ok");
}

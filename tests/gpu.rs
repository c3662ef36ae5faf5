//! The GPU path end to end, where this machine has a GPU: GEMM on cuBLAS,
//! the NCCL sweep, `train` on the GPU against the CPU, a resume from a
//! checkpoint written from device memory, the preflight check on by
//! default. They need a GPU, so they are ignored by default (the summary
//! counts them as ignored, never as passed); where a GPU and a Rust
//! toolchain are together run them with `cargo test --test gpu --
//! --include-ignored`, and there a missing GPU fails them. The lent GPU
//! machines run scripts/gpu-check.sh instead (it needs no Rust toolchain).

use ringmaster_suite::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(300);

/// Ok when GPU jobs can run here (`doctor --json` says so), else why not.
fn gpu_ready(dir: &Path, need_nccl: bool) -> Result<(), String> {
    let out = ringmaster(dir, &["doctor", "--json"], T);
    let d: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("doctor: {e}"))?;
    if d["gpu_ready"] != true {
        let why: Vec<String> = d["verdicts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["level"] == "error")
            .filter_map(|v| v["what"].as_str().map(str::to_string))
            .collect();
        return Err(format!("no usable GPU ({})", why.join("; ")));
    }
    if need_nccl && d["probe"]["nccl"]["present"] != true {
        return Err("no NCCL library".into());
    }
    Ok(())
}

macro_rules! require_gpu {
    ($dir:expr, $nccl:expr) => {
        if let Err(why) = gpu_ready($dir, $nccl) {
            panic!("this test needs a GPU: {why}");
        }
    };
}

fn small_train(name: &str, accelerator: &str, backend: &str, steps: u64) -> Value {
    let mut s = train_job(name, 1, 2, steps);
    s["resources"]["accelerator"] = json!(accelerator);
    s["collective"]["backend"] = json!(backend);
    s
}

#[test]
#[ignore = "needs a GPU: cargo test --test gpu -- --include-ignored"]
fn gemm_on_the_gpu_checks_its_results() {
    let dir = scratch("gpu-gemm");
    require_gpu!(&dir, false);
    for dtype in ["f32", "tf32", "bf16", "f16"] {
        let spec = json!({"name": "g", "resources": {"accelerator": "cuda"},
                          "workload": {"kind": "gemm", "m": 1024, "n": 1024, "k": 1024, "dtype": dtype, "iterations": 5}});
        let (out, r) = run_job(&dir, &spec, &format!("g-{dtype}"), &[], &["-q"], T);
        assert_eq!(out.code(), 0, "{dtype}: {}", out.stderr);
        assert!(
            r["results"]["0"]["gflops_best"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
}

#[test]
#[ignore = "needs a GPU: cargo test --test gpu -- --include-ignored"]
fn nccl_sweep_on_two_ranks_is_exact() {
    let dir = scratch("gpu-nccl");
    require_gpu!(&dir, true);
    let spec = json!({"name": "n", "resources": {"devices_per_node": 2, "accelerator": "cuda"},
                      "workload": {"kind": "allreduce", "min_bytes": 1024, "max_bytes": 4194304, "step_factor": 64, "iterations": 5},
                      "collective": {"backend": "nccl", "timeout_s": 60}});
    let (out, r) = run_job(&dir, &spec, "n", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    for row in r["summary"]["rows"].as_array().unwrap() {
        assert_eq!(row["wrong"], 0, "{row}");
    }
}

#[test]
#[ignore = "needs a GPU: cargo test --test gpu -- --include-ignored"]
fn train_on_the_gpu_agrees_with_the_cpu_and_resumes_from_device_memory() {
    let dir = scratch("gpu-train");
    require_gpu!(&dir, true);
    let (out, cpu) = run_job(
        &dir,
        &small_train("c", "cpu", "tcp", 80),
        "c",
        &[],
        &["-q"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let cpu_loss = cpu["results"]["0"]["final_loss"].as_f64().unwrap();
    let mut sums = Vec::new();
    for backend in ["nccl", "tcp"] {
        let (out, g) = run_job(
            &dir,
            &small_train("g", "cuda", backend, 80),
            &format!("g-{backend}"),
            &[],
            &["-q"],
            T,
        );
        assert_eq!(out.code(), 0, "{backend}: {}", out.stderr);
        let r0 = &g["results"]["0"];
        assert_ne!(r0["device"], "cpu", "{r0}");
        let loss = r0["final_loss"].as_f64().unwrap();
        assert!(
            (loss - cpu_loss).abs() <= 1e-3 * cpu_loss.abs(),
            "{backend}: {loss} vs CPU {cpu_loss}"
        );
        sums.push(r0["weights_sha256"].clone());
    }
    // 40 steps, then 80 from that checkpoint (written from device memory,
    // read back into it): the uninterrupted NCCL run's weights.
    let ck = dir.join("ck");
    let mut spec = small_train("r", "cuda", "nccl", 40);
    spec["checkpoint"] = json!({"dir": ck.to_str().unwrap(), "every_steps": 40});
    let (out, _) = run_job(&dir, &spec, "r1", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    spec["workload"]["steps"] = json!(80);
    let (out, r) = run_job(&dir, &spec, "r2", &[], &["-q"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(r["results"]["0"]["resumed_from_step"], 40, "{r}");
    assert_eq!(r["results"]["0"]["weights_sha256"], sums[0], "{r}");
}

#[test]
#[ignore = "needs a GPU: cargo test --test gpu -- --include-ignored"]
fn gpu_jobs_run_the_preflight_check_by_default() {
    let dir = scratch("gpu-preflight");
    require_gpu!(&dir, true);
    let (out, _) = run_job(
        &dir,
        &small_train("p", "cuda", "nccl", 10),
        "p",
        &[],
        &[],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let ev = events_named(&dir.join("runs/p"), "preflight");
    assert_eq!(ev.len(), 1, "{ev:?}");
    for f in ev[0]["figures"].as_object().unwrap().values() {
        assert!(
            f["gemm_gflops"].as_f64().unwrap() > 1000.0,
            "a GPU does TFLOP/s: {f}"
        );
    }
}

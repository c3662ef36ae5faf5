//! The command line on good and bad job specs: every problem at once with
//! its JSON path, documented exit codes, and nothing started on a bad spec.

use ringmaster_suite::*;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[test]
fn bad_spec_lists_every_problem_and_starts_nothing() {
    let dir = scratch("badspec");
    let job = write_job(
        &dir,
        &json!({"name": "bad", "resources": {"nodes": 0, "devices_per_node": 0},
                "workload": {"kind": "train", "layers": 1, "lr": 0}, "recovery": {"grace_period_s": -1}}),
    );
    let out = ringmaster(
        &dir,
        &["run", job.to_str().unwrap(), "--log-dir", "runs"],
        T,
    );
    assert_eq!(out.code(), 3, "{}", out.stderr);
    for want in [
        "resources.nodes: must be >= 1, got 0",
        "resources.devices_per_node: must be >= 1, got 0",
        "workload.layers: must be >= 2, got 1",
        "workload.lr: must be a positive number, got 0",
        "recovery.grace_period_s: must be >= 0, got -1",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?} in:\n{}",
            out.stderr
        );
    }
    assert!(
        !dir.join("runs").exists(),
        "a run directory was created for an invalid spec"
    );

    let v = ringmaster(&dir, &["validate", job.to_str().unwrap(), "--json"], T);
    assert_eq!(v.code(), 3);
    let parsed: serde_json::Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(parsed["valid"], false);
    assert_eq!(
        parsed["errors"].as_array().unwrap().len(),
        5,
        "{}",
        v.stdout
    );
}

#[test]
fn structural_errors_name_the_field() {
    let dir = scratch("structural");
    let cases = [
        (
            json!({"name": "x", "workload": {"kind": "train", "stepz": 1}}),
            "workload.stepz: unknown field `stepz`",
        ),
        (
            json!({"name": "x", "workload": {"kind": "train"}, "resources": {"nodes": "2"}}),
            "resources.nodes: invalid type: string \"2\"",
        ),
        (
            json!({"name": "x", "workload": {"kind": "jump"}}),
            "workload.kind: unknown variant `jump`",
        ),
    ];
    for (spec, want) in cases {
        let job = write_job(&dir, &spec);
        let out = ringmaster(&dir, &["validate", job.to_str().unwrap()], T);
        assert_eq!(out.code(), 3, "{spec}");
        assert!(out.stderr.contains(want), "want {want:?} in {}", out.stderr);
    }
    // Several structural problems at once: all of them, each with its path.
    let job = write_job(
        &dir,
        &json!({"name": "x", "nodez": 2, "resources": {"nodes": "2"}, "workload": {"kind": "train", "stepz": 1}}),
    );
    let out = ringmaster(&dir, &["validate", job.to_str().unwrap()], T);
    assert_eq!(out.code(), 3);
    for want in [
        "nodez: unknown field",
        "resources.nodes: invalid type",
        "workload.stepz: unknown field",
    ] {
        assert!(out.stderr.contains(want), "want {want:?} in {}", out.stderr);
    }
    std::fs::write(dir.join("broken.json"), "{\"name\": \n").unwrap();
    let out = ringmaster(&dir, &["validate", "broken.json"], T);
    assert_eq!(out.code(), 3);
    assert!(
        out.stderr.contains("invalid JSON at line"),
        "{}",
        out.stderr
    );
}

#[test]
fn overrides_and_set_reach_the_spec() {
    let dir = scratch("overrides");
    let job = write_job(&dir, &train_job("ov", 1, 1, 5));
    let out = ringmaster(
        &dir,
        &[
            "plan",
            job.to_str().unwrap(),
            "--nnodes",
            "3",
            "--nproc-per-node",
            "2",
            "--set",
            "provider.kind=local",
            "--set",
            "provider.first_address=127.0.0.9",
            "--json",
        ],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let p: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(p["world_size"], 6);
    assert_eq!(p["workers"][5]["node_addr"], "127.0.0.11");
    assert_eq!(p["master_addr"], "127.0.0.9");
    assert_eq!(p["runnable"], true);

    let bad = ringmaster(
        &dir,
        &[
            "validate",
            job.to_str().unwrap(),
            "--set",
            "oops",
            "--set",
            "recovery.max_restarts=-2",
        ],
        T,
    );
    assert_eq!(bad.code(), 3);
    assert!(
        bad.stderr
            .contains("--set: expected path=value, got `oops`"),
        "{}",
        bad.stderr
    );
}

#[test]
fn unsupported_and_missing_things_have_their_own_codes() {
    let dir = scratch("unsupported");
    let job = write_job(
        &dir,
        &json!({"name": "g", "resources": {"accelerator": "h100"}, "workload": {"kind": "gemm"}}),
    );
    let out = ringmaster(&dir, &["run", job.to_str().unwrap()], T);
    assert_eq!(out.code(), 6, "{}", out.stderr);
    assert!(
        out.stderr.contains("resources.accelerator"),
        "{}",
        out.stderr
    );
    assert!(!dir.join("runs").exists());

    let out = ringmaster(&dir, &["run", "nope.json"], T);
    assert_eq!(out.code(), 7, "{}", out.stderr);
    assert!(out.stderr.contains("nope.json"), "{}", out.stderr);

    let job = write_job(&dir, &train_job("w", 1, 1, 1));
    let out = ringmaster(
        &dir,
        &[
            "run",
            job.to_str().unwrap(),
            "--worker-bin",
            "/nonexistent/worker",
        ],
        T,
    );
    assert_eq!(out.code(), 7, "{}", out.stderr);
    assert!(out.stderr.contains("/nonexistent/worker"), "{}", out.stderr);

    let out = ringmaster(&dir, &["run", "--no-such-flag"], T);
    assert_eq!(out.code(), 2);
}

#[test]
fn schema_is_json_schema_of_the_spec() {
    let dir = scratch("schema");
    let out = ringmaster(&dir, &["schema"], T);
    assert_eq!(out.code(), 0);
    let s: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        s["$schema"].as_str().unwrap().contains("json-schema.org"),
        "{s}"
    );
    assert_eq!(s["additionalProperties"], false);
    assert!(s["required"]
        .as_array()
        .unwrap()
        .contains(&json!("workload")));
}

#[test]
fn shipped_configs_validate() {
    let dir = scratch("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let p = entry.unwrap().path();
        // catalog.json is the offer catalog, not a job (the launcher's unit
        // tests parse it).
        if p.extension().is_some_and(|e| e == "json") && !p.ends_with("catalog.json") {
            let out = ringmaster(&dir, &["validate", p.to_str().unwrap()], T);
            assert_eq!(out.code(), 0, "{}: {}", p.display(), out.stderr);
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn doctor_and_gpus_explain_what_this_machine_has() {
    let dir = scratch("doctor");
    let out = ringmaster(&dir, &["doctor"], T);
    assert!(
        out.stdout.contains("this build targets CUDA 13.0"),
        "{}",
        out.stdout
    );
    let json = ringmaster(&dir, &["doctor", "--json"], T);
    let r: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    // Exit codes a script can use: 6 when any verdict is an error (GPU
    // jobs cannot run here), else 0.
    let errors = r["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["level"] == "error");
    let want = if errors { 6 } else { 0 };
    assert_eq!(out.code(), want, "{}", out.stdout);
    assert_eq!(json.code(), want);
    let has_driver = r["probe"]["driver"]["present"] == true;
    let gpus = ringmaster(&dir, &["gpus", "--csv"], T);
    if has_driver {
        eprintln!("a driver is present: checking the GPU-side output");
        assert_eq!(gpus.code(), 0, "{}", gpus.stderr);
        assert!(
            gpus.stdout
                .starts_with("timestamp, name, utilization.gpu [%], memory.used [MiB]"),
            "{}",
            gpus.stdout
        );
    } else {
        assert_eq!(r["gpu_ready"], false);
        assert!(out.stdout.contains("no NVIDIA driver"), "{}", out.stdout);
        assert!(out.stdout.contains("fix: "), "{}", out.stdout);
        assert_eq!(gpus.code(), 6, "{}", gpus.stderr);
        assert!(gpus.stderr.contains("libnvidia-ml"), "{}", gpus.stderr);
    }
}

#[test]
fn accelerator_auto_runs_on_the_cpu_and_says_why() {
    let dir = scratch("auto");
    let job = write_job(
        &dir,
        &json!({"name": "auto", "resources": {"accelerator": "auto"}, "workload": {"kind": "gemm", "m": 32, "n": 32, "k": 32}}),
    );
    let out = ringmaster(
        &dir,
        &[
            "run",
            job.to_str().unwrap(),
            "--log-dir",
            "runs",
            "--run-id",
            "a",
        ],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("accelerator \"auto\""),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("running on the CPU"), "{}", out.stderr);
    let r = read_report(&dir.join("runs/a/report.json"));
    assert!(
        r["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("running on the CPU")),
        "{r}"
    );
    let out = ringmaster(
        &dir,
        &[
            "run",
            job.to_str().unwrap(),
            "--set",
            "collective.backend=nccl",
        ],
        T,
    );
    assert_eq!(out.code(), 6, "{}", out.stderr);
    assert!(
        out.stderr.contains("collective.backend: \"nccl\""),
        "{}",
        out.stderr
    );
}

/// `train` on a GPU: without one, `cuda` is refused before anything starts
/// (exit 6, naming what is missing) and `auto` trains on the CPU and says
/// so. Where a driver is present the GPU run itself is scripts/gpu-check.sh's.
#[test]
fn train_on_a_gpu_is_refused_without_one_and_auto_falls_back() {
    let dir = scratch("train-gpu");
    let doctor = ringmaster(&dir, &["doctor", "--json"], T);
    let r: serde_json::Value = serde_json::from_str(&doctor.stdout).unwrap();
    if r["probe"]["driver"]["present"] == true {
        eprintln!("SKIPPED: this machine has an NVIDIA driver; scripts/gpu-check.sh runs train on the GPU");
        return;
    }
    let mut spec = train_job("tg", 1, 2, 20);
    spec["resources"]["accelerator"] = json!("cuda");
    let job = write_job(&dir, &spec);
    for backend in ["auto", "nccl", "tcp"] {
        let out = ringmaster(
            &dir,
            &[
                "run",
                job.to_str().unwrap(),
                "--set",
                &format!("collective.backend={backend}"),
            ],
            T,
        );
        assert_eq!(out.code(), 6, "{backend}: {}", out.stderr);
        assert!(
            out.stderr.contains("resources.accelerator: \"cuda\""),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("no usable GPU"), "{}", out.stderr);
        assert!(!dir.join("runs").exists(), "nothing may start");
    }
    spec["resources"]["accelerator"] = json!("auto");
    let (out, r) = run_job(&dir, &spec, "a", &[], &[], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stderr.contains("running on the CPU"), "{}", out.stderr);
    let ranks = r["results"].as_object().expect("results");
    assert_eq!(ranks.len(), 2, "{r}");
    for res in ranks.values() {
        assert_eq!(res["device"], "cpu", "{res}");
        assert_eq!(res["steps_done"], 20, "{res}");
    }
}

/// `plan` with a `capacity` section ranks the built-in catalog's offers;
/// an impossible request is one clear error (exit 6); a broken catalog or
/// capacity field is a spec error (exit 3) naming the field.
#[test]
fn plan_ranks_capacity_offers_and_refuses_what_nothing_fits() {
    let dir = scratch("capacity");
    let spec = json!({"name": "big", "resources": {"nodes": 2, "devices_per_node": 8, "accelerator": "h100"},
                      "workload": {"kind": "train", "steps": 10},
                      "capacity": {"market": "spot-then-on-demand", "interconnect": "rdma", "expected_hours": 72}});
    let job = write_job(&dir, &spec);
    let out = ringmaster(&dir, &["plan", job.to_str().unwrap(), "--json"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let cands = v["capacity"]["candidates"].as_array().unwrap();
    assert_eq!(cands[0]["role"], "pick");
    assert_eq!(cands[0]["market"], "spot");
    // Only H100 x8 offers with RDMA between nodes: GCP's a3 (GPUDirect-TCPX)
    // is rejected with its reason.
    for c in cands {
        let it = c["instance_type"].as_str().unwrap();
        assert!(
            ["p5.48xlarge", "Standard_ND96isr_H100_v5"].contains(&it),
            "{it}"
        );
    }
    let rejected = v["capacity"]["rejected"].as_array().unwrap();
    let a3 = rejected
        .iter()
        .find(|r| r["instance_type"] == "a3-highgpu-8g")
        .unwrap();
    assert!(
        a3["reason"].as_str().unwrap().contains("GPUDirect-TCPX"),
        "{a3}"
    );
    assert!(cands
        .iter()
        .any(|c| c["role"] == "fallback" && c["market"] == "on-demand"));
    // The human table names the pick and why.
    let out = ringmaster(&dir, &["plan", job.to_str().unwrap()], T);
    assert!(
        out.stdout.contains("pick: ") && out.stdout.contains("lowest expected total cost"),
        "{}",
        out.stdout
    );

    let out = ringmaster(
        &dir,
        &[
            "plan",
            job.to_str().unwrap(),
            "--set",
            "capacity.interconnect=infiniband",
            "--set",
            "capacity.regions=[\"us-east-1\"]",
        ],
        T,
    );
    assert_eq!(out.code(), 6, "{}", out.stderr);
    assert!(
        out.stderr.contains("no offer has 2 node(s) x 8 x H100 and InfiniBand between nodes in the allowed regions (us-east-1)"),
        "{}",
        out.stderr
    );

    std::fs::write(
        dir.join("cat.json"),
        r#"{"format_version": 1, "offers": [{"cloud": "x"}]}"#,
    )
    .unwrap();
    let out = ringmaster(
        &dir,
        &[
            "plan",
            job.to_str().unwrap(),
            "--set",
            "capacity.catalog=cat.json",
            "--set",
            "capacity.interconnect=fast",
        ],
        T,
    );
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("capacity.interconnect: must be any, rdma or infiniband"),
        "{}",
        out.stderr
    );
    let out = ringmaster(
        &dir,
        &[
            "plan",
            job.to_str().unwrap(),
            "--set",
            "capacity.catalog=cat.json",
        ],
        T,
    );
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("capacity.catalog: cat.json: missing field"),
        "{}",
        out.stderr
    );
}

/// A capacity question (4 nodes x 8 H100, no provider to run it here) is
/// answered with the clouds: one line for the 32 ranks (--ranks lists
/// them), no "NOT RUNNABLE", the rejected offers' reasons in the text.
/// Owned capacity comes first at no cost; a 60-hour job on short-term
/// reservations buys a 3-day Capacity Block; a bad owned entry names its
/// field (exit 3).
/// `capacity.spot_trace`: `plan` replays the pick's spot capacity under
/// three policies (the arithmetic is table-tested in
/// launcher/src/capacity/policies.rs): 4 x p4d.24xlarge, 67 h of work, half
/// the spot capacity gone from hour 24 to 48. Falling back to on-demand is
/// fastest, shrinking cheapest, waiting neither; a trace that cannot be
/// read or parsed is exit 3 naming the field.
#[test]
fn plan_compares_three_policies_on_a_spot_trace() {
    let dir = scratch("plan-policies");
    let trace = dir.join("trace.json");
    std::fs::write(
        &trace,
        r#"[{"at_s": 0, "capacity": 4}, {"at_s": 86400, "capacity": 2}, {"at_s": 172800, "capacity": 4}]"#,
    )
    .unwrap();
    let spec = json!({"name": "p", "resources": {"nodes": 4, "devices_per_node": 8, "accelerator": "a100"},
                      "workload": {"kind": "command", "argv": ["python3", "train.py"]},
                      "capacity": {"market": "spot", "expected_hours": 67, "recovery_minutes": 10,
                                   "regions": ["us-west-2"], "spot_trace": trace.to_str().unwrap()}});
    let job = write_job(&dir, &spec);
    let job = job.to_str().unwrap();
    let out = ringmaster(&dir, &["plan", job], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let text = &out.stdout;
    assert!(text.contains("4 x p4d.24xlarge aws us-west-2"), "{text}");
    assert!(
        text.contains("fastest: fall back to on-demand; cheapest: shrink and grow back"),
        "{text}"
    );
    assert!(
        text.contains("assumed: shrinking down to 2 node(s)"),
        "{text}"
    );
    let out = ringmaster(&dir, &["plan", job, "--json"], T);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let rows = v["policies"]["outcomes"].as_array().unwrap();
    let get = |i: usize, k: &str| rows[i][k].as_f64().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows.iter()
            .map(|r| r["policy"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["wait", "on-demand", "shrink"]
    );
    // Waiting loses the day (24 h); the fallback only its restarts; the
    // shrunk run half of it.
    assert!(
        (get(0, "hours") - (67.0 + 24.0 + 2.0 / 6.0)).abs() < 0.1,
        "{rows:?}"
    );
    assert!(
        (get(1, "hours") - (67.0 + 2.0 / 6.0)).abs() < 0.1,
        "{rows:?}"
    );
    assert!(get(1, "hours") < get(2, "hours") && get(2, "hours") < get(0, "hours"));
    assert!(get(2, "cost_usd") < get(0, "cost_usd") && get(0, "cost_usd") < get(1, "cost_usd"));
    for (value, want) in [
        (
            json!("/nonexistent/trace.json"),
            "capacity.spot_trace: cannot read /nonexistent/trace.json",
        ),
        (json!(job), "capacity.spot_trace: "),
    ] {
        let set = format!("capacity.spot_trace={value}");
        let out = ringmaster(&dir, &["plan", job, "--set", &set], T);
        assert_eq!(out.code(), 3, "{}", out.stderr);
        assert!(out.stderr.contains(want), "{}", out.stderr);
    }
}

#[test]
fn plan_answers_a_capacity_question_with_the_clouds() {
    let dir = scratch("capacity-question");
    let spec = json!({"name": "big", "resources": {"nodes": 4, "devices_per_node": 8, "accelerator": "h100"},
                      "workload": {"kind": "train", "steps": 10},
                      "capacity": {"expected_hours": 48}});
    let job = write_job(&dir, &spec);
    let job = job.to_str().unwrap();
    let out = ringmaster(&dir, &["plan", job], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let text = &out.stdout;
    assert!(
        !text.contains("rank-31.log") && !text.contains("NOT RUNNABLE"),
        "{text}"
    );
    assert!(text.contains("ranks: 32 worker(s), 8 per node"), "{text}");
    assert!(text.contains("this machine: not where it runs ("), "{text}");
    assert!(
        text.contains("not considered:\n")
            && text.contains("p4d.24xlarge (us-east-1): A100 GPUs, not H100"),
        "{text}"
    );
    assert!(text.contains("fails over to: "), "{text}");
    let out = ringmaster(&dir, &["plan", job, "--ranks"], T);
    assert_eq!(
        out.stdout.matches("/attempt-<n>/rank-").count(),
        32,
        "{}",
        out.stdout
    );

    let out = ringmaster(
        &dir,
        &[
            "plan",
            job,
            "--json",
            "--set",
            r#"capacity.owned=[{"instance_type": "p5.48xlarge", "region": "us-east-1", "nodes": 4, "id": "cr-0123"}]"#,
        ],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let pick = &v["capacity"]["candidates"][0];
    assert_eq!(
        (
            pick["market"].as_str(),
            pick["expected_cost"].as_f64(),
            pick["owned_ids"][0].as_str()
        ),
        (Some("owned"), Some(0.0), Some("cr-0123")),
        "{pick}"
    );

    let out = ringmaster(
        &dir,
        &[
            "plan",
            job,
            "--set",
            "capacity.market=short-term",
            "--set",
            "capacity.expected_hours=60",
        ],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("pick: p5.48xlarge capacity-block (us-east-1) on aws")
            && out.stdout.contains("4 instance(s) for 72 h, not preempted"),
        "{}",
        out.stdout
    );

    let out = ringmaster(
        &dir,
        &[
            "plan",
            job,
            "--set",
            r#"capacity.owned=[{"instance_type": "p5.48xlarge", "nodes": 0, "until": "soon"}]"#,
        ],
        T,
    );
    assert_eq!(out.code(), 3, "{}", out.stderr);
    for want in [
        "capacity.owned[0].nodes: must be >= 1, got 0",
        "capacity.owned[0].until: must be a date YYYY-MM-DD, got \"soon\"",
    ] {
        assert!(out.stderr.contains(want), "{want}\n{}", out.stderr);
    }
}

/// `catalog refresh` reads the clouds' price files (small hand-written
/// files in their formats, tests/fixtures/prices) into a catalog `plan`
/// then prices with: the new figure, its date, a region the files added. A file of the wrong kind is a clear error (exit 3) naming
/// the flag; no file at all is one too.
#[test]
fn catalog_refresh_takes_the_price_files_and_plan_uses_them() {
    let dir = scratch("refresh");
    let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prices");
    let f = |n: &str| fx.join(n).to_str().unwrap().to_string();
    let (aws, spot, azure) = (
        f("aws-ec2-price-list.json"),
        f("aws-spot-price-history.json"),
        f("azure-retail-prices.json"),
    );
    let out = ringmaster(
        &dir,
        &[
            "catalog",
            "refresh",
            "--aws-price-list",
            &aws,
            "--aws-spot-history",
            &spot,
            "--azure-prices",
            &azure,
            "--add-regions",
            "-o",
            "cat.json",
        ],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    for want in [
        "p5.48xlarge us-east-1: on_demand 98.32 (2024-06) -> 55.04 (2025-06)",
        "p5.48xlarge us-west-2: added (hardware as in us-east-1)",
        "Standard_ND96isr_H100_v5 eastus: spot 39.328 (2026-11) -> 35.1 (2025-07)",
    ] {
        assert!(out.stderr.contains(want), "{want}\n{}", out.stderr);
    }
    let job = write_job(
        &dir,
        &json!({"name": "p5", "resources": {"nodes": 2, "devices_per_node": 8, "accelerator": "h100"},
                "workload": {"kind": "train", "steps": 10},
                "capacity": {"market": "on-demand", "catalog": "cat.json", "regions": ["us-east-1", "us-west-2"]}}),
    );
    let out = ringmaster(&dir, &["plan", job.to_str().unwrap(), "--json"], T);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let rows: Vec<(String, f64, String, bool)> = v["capacity"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["region"].as_str().unwrap().into(),
                c["price_per_hour"].as_f64().unwrap(),
                c["price_as_of"].as_str().unwrap().into(),
                c["price_stale"].as_bool().unwrap(),
            )
        })
        .collect();
    // The files' figures with their date (June 2025: over a year before
    // these tests were written, so still marked stale, as it should be).
    assert_eq!(
        rows,
        [
            ("us-east-1".into(), 110.08, "2025-06".into(), true),
            ("us-west-2".into(), 110.08, "2025-06".into(), true)
        ],
        "{}",
        v["capacity"]
    );

    std::fs::write(dir.join("bad.json"), "{}").unwrap();
    let out = ringmaster(
        &dir,
        &["catalog", "refresh", "--aws-price-list", "bad.json"],
        T,
    );
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--aws-price-list: bad.json: not an AWS Price List file for EC2"),
        "{}",
        out.stderr
    );
    let out = ringmaster(&dir, &["catalog", "refresh"], T);
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("name at least one price file"),
        "{}",
        out.stderr
    );
}

/// `plan --compare` ranks shapes by modelled cost per step; a workload whose
/// step cannot be derived needs the figures, and says which.
#[test]
fn plan_compare_ranks_shapes_by_cost_per_step() {
    let dir = scratch("compare");
    let job = write_job(
        &dir,
        &json!({"name": "cmp", "resources": {"nodes": 1, "devices_per_node": 8, "accelerator": "h100"},
                "workload": {"kind": "train", "steps": 10, "input_dim": 4096, "hidden": 4096, "layers": 8,
                             "output_dim": 4096, "batch_per_rank": 32},
                "capacity": {"market": "on-demand", "max_nodes": 2,
                             "regions": ["us-east-1", "us-central1", "eastus"]}}),
    );
    let out = ringmaster(
        &dir,
        &["plan", job.to_str().unwrap(), "--compare", "--json"],
        T,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    // 8 layers of 4096: 134 M parameters; 6 x P x (32 x 8) FLOP per step.
    let p = 8.0 * (4096.0 * 4096.0 + 4096.0);
    assert!((v["step"]["tflop"].as_f64().unwrap() - 6.0 * p * 256.0 / 1e12).abs() < 1e-9);
    assert!((v["step"]["gradient_gb"].as_f64().unwrap() - 4.0 * p / 1e9).abs() < 1e-9);
    let shapes = v["shapes"].as_array().unwrap();
    // H100 offers only (the job names the model) in the three regions,
    // one and two nodes each.
    assert_eq!(shapes.len(), 6, "{v}");
    assert!(shapes.iter().all(|s| s["gpu"] == "H100"));
    let cost: Vec<f64> = shapes
        .iter()
        .map(|s| s["usd_per_1000_steps"].as_f64().unwrap())
        .collect();
    assert!(cost.windows(2).all(|w| w[0] <= w[1]), "{cost:?}");
    let out = ringmaster(&dir, &["plan", job.to_str().unwrap(), "--compare"], T);
    assert!(out.stdout.contains("cheapest per step:"), "{}", out.stdout);

    let job = write_job(
        &dir,
        &json!({"name": "cmd", "workload": {"kind": "command", "argv": ["true"]}}),
    );
    let out = ringmaster(&dir, &["plan", job.to_str().unwrap(), "--compare"], T);
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("capacity.step_tflop: plan --compare needs it for a command workload"),
        "{}",
        out.stderr
    );
}

#[test]
fn what_validate_passes_run_accepts_and_loose_input_is_refused() {
    let dir = scratch("loose");
    // Each bad file: validate and run both exit 3 naming the problem, and
    // run starts nothing.
    let long = "n".repeat(300);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("nul", json!({"name": "t", "env": {"A": "x\u{0}y"}, "workload": {"kind": "train"}}).to_string().into_bytes(),
         "env.A: contains a NUL byte"),
        ("long", json!({"name": long, "workload": {"kind": "train"}}).to_string().into_bytes(),
         "name: must be at most 200 characters, got 300"),
        ("latin1", b"{\"name\": \"caf\xe9\", \"workload\": {\"kind\": \"train\"}}".to_vec(), "is not UTF-8 text"),
        ("array", br#"{"name": "t", "resources": [1, 2], "workload": {"kind": "train"}}"#.to_vec(),
         "resources: expected an object, got an array"),
        ("dup", br#"{"name": "t", "resources": {"nodes": 1, "nodes": 2}, "workload": {"kind": "train"}}"#.to_vec(),
         "resources.nodes: duplicate key"),
        ("huge-duration", json!({"name": "t", "workload": {"kind": "train"}, "recovery": {"grace_period_s": 1e30}}).to_string().into_bytes(),
         "recovery.grace_period_s: must be at most 31536000 s"),
    ];
    for (tag, bytes, want) in cases {
        let job = dir.join(format!("{tag}.json"));
        std::fs::write(&job, bytes).unwrap();
        for cmd in ["validate", "run"] {
            let out = ringmaster(&dir, &[cmd, job.to_str().unwrap(), "--log-dir", "runs"], T);
            assert_eq!(out.code(), 3, "{cmd} {tag}: {}", out.stderr);
            assert!(
                out.stderr.contains(want),
                "{cmd} {tag}: want {want:?} in {}",
                out.stderr
            );
        }
    }
    // An unknown field and a bad value: both reported, at once.
    let job = write_job(
        &dir,
        &json!({"name": "t", "bogus": 1, "resources": {"devices_per_node": 0}, "workload": {"kind": "train"}}),
    );
    let out = ringmaster(&dir, &["validate", job.to_str().unwrap()], T);
    assert_eq!(out.code(), 3);
    assert!(
        out.stderr.contains("bogus: unknown field")
            && out
                .stderr
                .contains("resources.devices_per_node: must be >= 1"),
        "{}",
        out.stderr
    );
    assert!(!dir.join("runs").exists(), "nothing may start");
    // --run-id names a folder under log_dir: no way out of it.
    for bad in ["../../evil", "/tmp/evil", "a\nb", ".."] {
        let out = ringmaster(&dir, &["run", "--run-id", bad, "--log-dir", "runs"], T);
        assert_eq!(out.code(), 3, "{bad:?}: {}", out.stderr);
        assert!(out.stderr.contains("--run-id:"), "{}", out.stderr);
    }
    assert!(!dir.join("runs").exists() && !dir.parent().unwrap().join("evil").exists());
}

#[test]
fn plan_takes_big_inputs_and_a_closed_pipe_in_its_stride() {
    let dir = scratch("bigplan");
    // 100,000 variables for 3,840 workers: once quadratic in the variables
    // and then held once per worker (the launcher was OOM-killed).
    let env: serde_json::Map<String, serde_json::Value> = (0..100_000)
        .map(|i| (format!("V{i}"), json!("x")))
        .collect();
    let job = write_job(
        &dir,
        &json!({"name": "big", "workload": {"kind": "train"}, "env": env,
                                      "resources": {"nodes": 60, "devices_per_node": 64}}),
    );
    let out = ringmaster(
        &dir,
        &["plan", job.to_str().unwrap()],
        Duration::from_secs(120),
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("3840 workers"),
        "{}",
        &out.stdout[..200.min(out.stdout.len())]
    );
    // The reader goes away after the first line: no panic (exit 101), just
    // the end a closed pipe brings (SIGPIPE) or success.
    use std::os::unix::process::ExitStatusExt;
    let mut child = std::process::Command::new(ringmaster_bin())
        .args(["schema"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = wait_bounded(&mut child, T).expect("schema ended");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        status.code() == Some(0) || status.signal() == Some(libc::SIGPIPE),
        "{status:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_model_too_big_for_this_machine_is_refused_before_it_starts() {
    let dir = scratch("toobig");
    // hidden 65536 in 6 layers: ~250 GB per worker, 2 TB for 8 (the
    // workers used to grow until the OOM killer took them).
    let job = write_job(
        &dir,
        &json!({"name": "big", "workload": {"kind": "train", "hidden": 65536, "layers": 6},
                                      "resources": {"nodes": 1, "devices_per_node": 8}}),
    );
    for cmd in ["validate", "run"] {
        let out = ringmaster(&dir, &[cmd, job.to_str().unwrap(), "--log-dir", "runs"], T);
        assert_eq!(out.code(), 3, "{cmd}: {}", out.stderr);
        assert!(
            out.stderr.contains("workload: needs about")
                && out.stderr.contains("more than this machine's"),
            "{}",
            out.stderr
        );
    }
    assert!(!dir.join("runs").exists());
    let out = ringmaster(&dir, &["plan", job.to_str().unwrap()], T);
    assert!(
        out.stdout.contains("memory: about") && out.stdout.contains("DOES NOT FIT"),
        "{}",
        out.stdout
    );
    let small = write_job(
        &dir,
        &json!({"name": "small", "workload": {"kind": "train"}}),
    );
    let out = ringmaster(&dir, &["plan", small.to_str().unwrap()], T);
    assert!(
        out.stdout.contains("memory: about") && !out.stdout.contains("DOES NOT FIT"),
        "{}",
        out.stdout
    );
}

/// `validate` reports what `run` refuses before starting, with run's exit
/// code: spec problems (3, every one, each at its field) and what this
/// machine cannot do (6, 7).
#[test]
fn validate_and_run_agree_on_what_is_refused() {
    let dir = scratch("agree");
    let doctor = ringmaster(&dir, &["doctor", "--json"], T);
    let d: serde_json::Value = serde_json::from_str(&doctor.stdout).unwrap();
    let gpu_here = d["probe"]["driver"]["present"] == true;
    let base = train_job("agree", 1, 2, 20);
    let with = |path: &[&str], v: serde_json::Value| {
        let mut s = base.clone();
        let mut cur = &mut s;
        for p in &path[..path.len() - 1] {
            cur = &mut cur[*p];
        }
        cur[path[path.len() - 1]] = v;
        s
    };
    let mut cases = vec![
        (
            "banana",
            with(&["resources", "accelerator"], json!("banana")),
            3,
            "resources.accelerator",
        ),
        (
            "cpu nccl",
            with(&["collective", "backend"], json!("nccl")),
            3,
            "collective.backend",
        ),
        (
            "slurm outside an allocation",
            with(&["provider"], json!({"kind": "slurm"})),
            6,
            "provider.kind slurm",
        ),
        (
            "gcp",
            with(
                &["provider"],
                json!({"kind": "gcp", "project": "p", "machine_type": "m", "zones": ["z"], "image": "i", "rendezvous_host": "h"}),
            ),
            6,
            "does not send them",
        ),
        (
            "checkpoint folder under a file",
            with(
                &["checkpoint"],
                json!({"dir": "/dev/null/ck", "every_steps": 10}),
            ),
            7,
            "/dev/null/ck",
        ),
    ];
    if !gpu_here {
        cases.push((
            "cuda without a GPU",
            with(&["resources", "accelerator"], json!("cuda")),
            6,
            "no usable GPU",
        ));
    }
    for (what, spec, code, words) in cases {
        let job = write_job(&dir, &spec);
        let v = ringmaster(&dir, &["validate", job.to_str().unwrap()], T);
        let r = ringmaster(&dir, &["run", job.to_str().unwrap(), "-q"], T);
        assert_eq!(r.code(), code, "{what}: run: {}", r.stderr);
        assert_eq!(v.code(), code, "{what}: validate: {}{}", v.stdout, v.stderr);
        let said = format!("{}{}", v.stdout, v.stderr);
        assert!(said.contains(words), "{what}: {said}");
        assert!(r.stderr.contains(words), "{what}: {}", r.stderr);
        assert!(!dir.join("runs").exists(), "{what}: run started nothing");
    }
    // Inside a tagged section the wrong type is named at its field, and a
    // misspelt provider kind does not hide the other problems.
    let mut spec = with(&["workload", "hidden"], json!("512"));
    spec["provider"] = json!({"kind": "awz"});
    spec["resources"]["nodes"] = json!(0);
    let job = write_job(&dir, &spec);
    let v = ringmaster(&dir, &["validate", "--json", job.to_str().unwrap()], T);
    assert_eq!(v.code(), 3);
    let out: serde_json::Value = serde_json::from_str(&v.stdout).unwrap();
    let paths: Vec<&str> = out["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for want in ["workload.hidden", "provider.kind", "resources.nodes"] {
        assert!(paths.contains(&want), "{want} in {paths:?}");
    }
}

/// `ringmaster agent --token-stdin` (what the ssh and Slurm sessions run):
/// an input without a token line is one clear error (exit 6) before it
/// tries the leader; with `--token-file` as well, the arguments are refused
/// (exit 2).
#[test]
fn an_agent_without_a_token_on_its_input_says_so() {
    let dir = scratch("agent-token-stdin");
    let agent = [
        "agent",
        "--leader",
        "127.0.0.1:1",
        "--node",
        "1",
        "--token-stdin",
    ];
    for (extra, code, want) in [
        (
            &[][..],
            6,
            "--token-stdin: standard input had no token line",
        ),
        (&["--token-file", "t"][..], 2, "cannot be used with"),
    ] {
        let args: Vec<&str> = agent.iter().chain(extra).copied().collect();
        let out = ringmaster(&dir, &args, T);
        assert_eq!(out.code(), code, "{extra:?}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{extra:?}: {}", out.stderr);
    }
}

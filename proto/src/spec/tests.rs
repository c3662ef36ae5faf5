//! The spec compiler's table tests: structural and semantic errors with
//! their paths, defaults, overrides, the schema.

use super::*;
use serde_json::json;

fn minimal() -> Value {
    json!({"name": "t", "workload": {"kind": "train"}})
}

fn issues_of(v: Value) -> Vec<String> {
    match compile(v) {
        Ok(_) => vec![],
        Err(e) => e.issues().iter().map(|i| i.to_string()).collect(),
    }
}

#[test]
fn loose_input_is_refused_with_every_problem_at_once() {
    // An array where an object belongs (serde would read it in order).
    let got = issues_of(json!({"name": "t", "resources": [1, 2], "workload": {"kind": "train"}}));
    assert_eq!(got, vec!["resources: expected an object, got an array"]);
    let got = issues_of(json!({"name": "t", "workload": {"kind": "train"}, "checkpoint": [1]}));
    assert_eq!(got, vec!["checkpoint: expected an object, got an array"]);
    let got = issues_of(json!({"name": "t", "workload": [1]}));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("workload: "), "{got:?}");
    // An unknown field does not hide a semantic problem.
    let got = issues_of(
        json!({"name": "t", "bogus": 1, "resources": {"devices_per_node": 0}, "workload": {"kind": "train"}}),
    );
    assert!(
        got.iter().any(|g| g.starts_with("bogus: unknown field")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|g| g == "resources.devices_per_node: must be >= 1, got 0"),
        "{got:?}"
    );
    // A wrongly typed key is not reported twice (once as its default).
    let got = issues_of(
        json!({"name": "t", "resources": {"nodes": "two"}, "workload": {"kind": "train"}}),
    );
    assert_eq!(got.len(), 1, "{got:?}");
    // What run refused but validate passed.
    let got = issues_of(json!({"name": "t", "env": {"A": "x\0y"}, "workload": {"kind": "train"}}));
    assert_eq!(
        got,
        vec!["env.A: contains a NUL byte, which no environment variable can hold"]
    );
    let got = issues_of(json!({"name": "n".repeat(300), "workload": {"kind": "train"}}));
    assert_eq!(got, vec!["name: must be at most 200 characters, got 300"]);
    assert!(
        check_name("..").is_err() && check_name("../x").is_err() && check_name("ok-1.2").is_ok()
    );
}

#[test]
fn a_key_given_twice_is_refused() {
    let text =
        r#"{"name": "t", "resources": {"nodes": 1, "nodes": 2}, "workload": {"kind": "train"}}"#;
    let e = parse_text(text).unwrap_err();
    let got: Vec<String> = e.issues().iter().map(|i| i.to_string()).collect();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("resources.nodes: duplicate key \"nodes\""),
        "{got:?}"
    );
    let text = r#"{"name": "t", "env": {"A": "1"}, "workload": {"kind": "train"}, "name": "u"}"#;
    let got = parse_text(text).unwrap_err().issues()[0].to_string();
    assert!(got.starts_with("name: duplicate key"), "{got}");
    // In arrays too.
    let text = r#"{"notices": {"watch": [{"kind": "aws", "kind": "gcp"}]}}"#;
    let got = parse_text(text).unwrap_err().issues()[0].to_string();
    assert!(
        got.starts_with("notices.watch[0].kind: duplicate key"),
        "{got}"
    );
    assert!(parse_text(r#"{"a": {"x": 1}, "b": {"x": 1}}"#).is_ok());
}

#[test]
fn minimal_spec_gets_defaults() {
    let c = compile(minimal()).unwrap();
    assert_eq!(c.spec.resources, Resources::default());
    assert_eq!(c.spec.provider.kind(), "local");
    assert_eq!(c.world_size(), 1);
    assert!(c.warnings.is_empty());
    match c.spec.workload {
        Workload::Train(t) => assert_eq!(t, TrainWorkload::default()),
        other => panic!("unexpected workload {other:?}"),
    }
}

/// Table: (patch path, value, expected issue text).
#[test]
fn semantic_errors_name_their_path() {
    let cases: &[(&str, Value, &str)] = &[
        ("resources.devices_per_node", json!(0), "resources.devices_per_node: must be >= 1, got 0"),
        ("resources.nodes", json!(0), "resources.nodes: must be >= 1, got 0"),
        ("resources.nodes", json!(20_000_000), "resources.nodes: the local provider has loopback addresses for at most 16777213 nodes from 127.0.0.2, got 20000000"),
        ("name", json!("a b"), "name: may hold only letters, digits, '-', '_', '.'; found ' ' in \"a b\""),
        ("workload.layers", json!(1), "workload.layers: must be >= 2, got 1"),
        ("workload.lr", json!(-1.0), "workload.lr: must be a positive number, got -1"),
        ("workload.momentum", json!(1.0), "workload.momentum: must be in [0, 1), got 1"),
        ("collective.timeout_s", json!(0), "collective.timeout_s: must be a positive number, got 0"),
        // Durations that no clock can hold are refused, not panicked on.
        ("collective.timeout_s", json!(1e20), "collective.timeout_s: must be at most 31536000 s (a year), got 100000000000000000000"),
        ("recovery.grace_period_s", json!(1e30), "recovery.grace_period_s: must be at most 31536000 s (a year), got 1000000000000000000000000000000"),
        ("recovery.rendezvous_timeout_s", json!(1e20), "recovery.rendezvous_timeout_s: must be at most 31536000 s (a year), got 100000000000000000000"),
        ("recovery.hang_timeout_s", json!(1e20), "recovery.hang_timeout_s: must be at most 31536000 s (a year), got 100000000000000000000"),
        ("recovery.heartbeat_timeout_s", json!(1e20), "recovery.heartbeat_timeout_s: must be at most 31536000 s (a year), got 100000000000000000000"),
        ("recovery.heartbeat_interval_s", json!(1e20), "recovery.heartbeat_interval_s: must be at most 31536000 s (a year), got 100000000000000000000"),
        ("recovery.notice_grace_s", json!(1e20), "recovery.notice_grace_s: must be at most 31536000 s (a year), got 100000000000000000000"),
        ("recovery.heartbeat_timeout_s", json!(0.6), "recovery.heartbeat_timeout_s: must be at least twice heartbeat_interval_s (0.5), got 0.6"),
        ("env.RANK", json!("3"), "env.RANK: is set by ringmaster for every worker and cannot be overridden"),
        ("provider.first_address", json!("10.0.0.1"), "provider.first_address: must be a loopback address (127.x.y.z), got 10.0.0.1"),
        ("threads_per_worker", json!(0), "threads_per_worker: must be >= 1, got 0"),
        ("resources.min_nodes", json!(2), "resources.min_nodes: must be <= 1, got 2"),
        ("resources.min_nodes", json!(0), "resources.min_nodes: must be >= 1, got 0"),
        ("resources.min_nodes", json!(1), "resources.min_nodes: an elastic world needs a provider that replaces lost nodes (sim, aws), not local"),
        ("collective.shm_chunk_bytes", json!(100), "collective.shm_chunk_bytes: must be >= 4096, got 100"),
        ("collective.shm_chunk_bytes", json!(4100), "collective.shm_chunk_bytes: 4100 is not a multiple of 8"),
        ("collective.shm_chunk_bytes", json!(1u64 << 30), "collective.shm_chunk_bytes: must be <= 268435456, got 1073741824"),
        ("preflight.min_ratio", json!(0), "preflight.min_ratio: must be in (0, 1], got 0"),
        ("preflight.min_ratio", json!(1.5), "preflight.min_ratio: must be in (0, 1], got 1.5"),
        ("workload", json!({"kind": "gemm", "dtype": "bf16"}), "workload.dtype: bf16 runs only on a GPU; set resources.accelerator to \"cuda\" (or a GPU model), or use f32/f64"),
    ];
    for (path, value, want) in cases {
        let mut v = minimal();
        if path.starts_with("provider") {
            set_path(&mut v, "provider.kind", json!("local")).unwrap();
        }
        set_path(&mut v, path, value.clone()).unwrap();
        let got = issues_of(v);
        assert!(
            got.iter().any(|g| g == want),
            "for {path}={value}: want {want:?}, got {got:?}"
        );
    }
}

#[test]
fn a_global_batch_is_whole_blocks_at_least_one_a_rank() {
    let spec = |resources: Value, global: u64| {
        json!({"name": "t", "resources": resources,
               "workload": {"kind": "train", "batch_per_rank": 16, "global_batch": global}})
    };
    let four = json!({"nodes": 2, "devices_per_node": 2});
    let cases: &[(Value, u64, Option<&str>)] = &[
        (four.clone(), 64, None),
        (four.clone(), 256, None),
        (json!({"nodes": 1, "devices_per_node": 3}), 64, None),
        (four.clone(), 40, Some("workload.global_batch: must be a multiple of workload.batch_per_rank (16), got 40")),
        (four.clone(), 0, Some("workload.global_batch: must be a multiple of workload.batch_per_rank (16), got 0")),
        (four.clone(), 32, Some("workload.global_batch: 32 rows are 2 block(s) of batch_per_rank 16: fewer than the 4 ranks (each trains at least one block)")),
        (json!({"nodes": 2, "devices_per_node": 2, "accelerator": "cuda"}), 128,
         Some("workload.global_batch: on a GPU each rank trains one block a step: set it to batch_per_rank x ranks (64), or leave it unset")),
        (json!({"nodes": 2, "devices_per_node": 2, "accelerator": "cuda"}), 64, None),
    ];
    for (resources, global, want) in cases {
        let got = issues_of(spec(resources.clone(), *global));
        match want {
            None => assert!(got.is_empty(), "{resources} {global}: {got:?}"),
            Some(w) => assert!(
                got.iter().any(|g| g == w),
                "{resources} {global}: want {w:?}, got {got:?}"
            ),
        }
    }
    // An elastic train job without a global batch is warned: on fewer
    // nodes it would train another model.
    let elastic = |g: Option<u64>| {
        let mut v = json!({"name": "t", "resources": {"nodes": 2, "min_nodes": 1},
                           "provider": {"kind": "sim", "cloud": "aws", "offer": "g5.2xlarge"},
                           "workload": {"kind": "train", "batch_per_rank": 16}});
        if let Some(g) = g {
            v["workload"]["global_batch"] = json!(g);
        }
        compile(v)
            .unwrap()
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        elastic(None)
            .iter()
            .any(|w| w.starts_with("workload.global_batch: is unset: on fewer nodes")),
        "{:?}",
        elastic(None)
    );
    assert!(elastic(Some(32)).is_empty(), "{:?}", elastic(Some(32)));
    // The blocks of a step and each rank's share.
    let t = TrainWorkload {
        batch_per_rank: 16,
        global_batch: Some(112),
        ..Default::default()
    };
    assert_eq!(t.blocks(4), 7);
    let shares: Vec<_> = (0..4).map(|r| t.blocks_of(r, 4)).collect();
    assert_eq!(shares, [0..2, 2..4, 4..6, 6..7]);
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let v = json!({
        "name": "",
        "resources": {"nodes": 0, "devices_per_node": 0},
        "workload": {"kind": "gemm", "m": 0, "iterations": 0},
        "recovery": {"grace_period_s": -1}
    });
    let got = issues_of(v);
    for want in [
        "name: must not be empty",
        "resources.nodes: must be >= 1, got 0",
        "resources.devices_per_node: must be >= 1, got 0",
        "workload.m: must be >= 1, got 0",
        "workload.iterations: must be >= 1, got 0",
        "recovery.grace_period_s: must be >= 0, got -1",
    ] {
        assert!(got.iter().any(|g| g == want), "missing {want:?} in {got:?}");
    }
    assert_eq!(got.len(), 6, "{got:?}");
}

#[test]
fn structural_errors_carry_the_path() {
    let cases: &[(Value, &str, &str)] = &[
        (
            json!({"name": "t", "workload": {"kind": "train"}, "resourcez": {}}),
            "resourcez",
            "unknown field `resourcez`",
        ),
        (
            json!({"name": "t", "workload": {"kind": "train", "stepz": 3}}),
            "workload.stepz",
            "unknown field `stepz`",
        ),
        (
            json!({"name": "t", "workload": {"kind": "train"}, "resources": {"nodes": "two"}}),
            "resources.nodes",
            "invalid type: string \"two\"",
        ),
        (
            json!({"name": "t", "workload": {"kind": "train"}, "resources": {"nodes": -1}}),
            "resources.nodes",
            "invalid value: integer `-1`",
        ),
        (
            json!({"name": "t", "workload": {"kind": "tarin"}}),
            "workload.kind",
            "unknown variant `tarin`",
        ),
        (
            json!({"name": "t", "workload": {"kind": "train"}, "provider": {"kind": "mars"}}),
            "provider.kind",
            "unknown variant `mars`",
        ),
        (
            json!({"name": "t", "workload": {"kind": "train"}, "collective": {"backend": "mpi"}}),
            "collective.backend",
            "unknown variant `mpi`",
        ),
        (
            json!({"workload": {"kind": "train"}}),
            "name",
            "missing field `name`",
        ),
    ];
    for (v, path, frag) in cases {
        let err = compile(v.clone()).unwrap_err();
        let issues = err.issues();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].path, *path, "{issues:?}");
        assert!(
            issues[0].message.contains(frag),
            "{:?} lacks {frag:?}",
            issues[0].message
        );
    }
}

#[test]
fn every_unknown_and_mistyped_field_is_reported() {
    let v = json!({
        "name": "t",
        "resourcez": {},
        "resources": {"nodes": "two", "gpus": 8},
        "workload": {"kind": "train", "stepz": 3},
        "recovery": {"max_restarts": -1}
    });
    let got = issues_of(v);
    let paths: Vec<&str> = got.iter().map(|g| g.split(':').next().unwrap()).collect();
    for want in [
        "resourcez",
        "resources.nodes",
        "resources.gpus",
        "workload.stepz",
        "recovery.max_restarts",
    ] {
        assert!(paths.contains(&want), "missing {want} in {got:?}");
    }
    assert_eq!(got.len(), 5, "{got:?}");
    // A removed required field is not reported twice.
    let got = issues_of(json!({"name": 5, "workload": {"kind": "train"}}));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("name: invalid type"), "{got:?}");
}

#[test]
fn set_overrides_parse_json_or_take_strings() {
    let mut v = minimal();
    apply_set(&mut v, "resources.nodes=3").unwrap();
    apply_set(&mut v, "workload.lr=0.5").unwrap();
    apply_set(&mut v, "name=renamed").unwrap();
    apply_set(&mut v, "env.FOO=bar=baz").unwrap();
    let c = compile(v).unwrap();
    assert_eq!(c.spec.resources.nodes, 3);
    assert_eq!(c.spec.name, "renamed");
    assert_eq!(c.spec.env["FOO"], "bar=baz");
    match c.spec.workload {
        Workload::Train(t) => assert_eq!(t.lr, 0.5),
        _ => unreachable!(),
    }
    assert!(apply_set(&mut minimal(), "novalue").is_err());
    assert!(apply_set(&mut minimal(), "a..b=1").is_err());
    let err = apply_set(&mut minimal(), "name.inner=1").unwrap_err();
    assert_eq!(err.path, "name");
}

#[test]
fn syntax_errors_give_line_and_column() {
    let e = parse_text("{\n  \"name\": \"x\",\n}").unwrap_err();
    assert!(e.to_string().contains("line 3"), "{e}");
}

#[test]
fn checkpoint_settings_are_checked() {
    let mut v = minimal();
    set_path(&mut v, "checkpoint.every_steps", json!(10)).unwrap();
    assert_eq!(
        issues_of(v.clone()),
        vec!["checkpoint.dir: must be set when checkpoint.every_steps is 10"]
    );
    set_path(&mut v, "checkpoint.dir", json!("ck")).unwrap();
    assert!(compile(v.clone()).unwrap().warnings.is_empty());
    set_path(&mut v, "workload", json!({"kind": "gemm"})).unwrap();
    assert_eq!(compile(v).unwrap().warnings.len(), 1);
}

#[test]
fn schema_forbids_unknown_fields() {
    let s = json_schema();
    assert_eq!(s["additionalProperties"], json!(false), "{s}");
    assert!(s["properties"]["workload"].is_object());
}

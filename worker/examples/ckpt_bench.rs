//! Checkpoint write throughput: `ckpt_bench <dir> <MiB> [shards]` writes one
//! f32 tensor of that size through the real checkpoint path (safetensors
//! shards streamed with CRC-32C, fsync, manifest, rename) and prints JSON
//! with the seconds and GB/s of the write and of the verified load, best of
//! two rounds (the first touch of fresh memory is slow on some VMs). Used by
//! scripts/bench.sh.

use std::collections::BTreeMap;
use std::time::Instant;
use worker::checkpoint::{commit, load_latest, write_shard, DirStore, SaveTag};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).expect("usage: ckpt_bench <dir> <MiB> [shards]");
    let mib: usize = args.get(2).and_then(|s| s.parse().ok()).expect("MiB");
    let shards: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let data: Vec<f32> = (0..mib * (1 << 18))
        .map(|i| (i % 1000) as f32 * 0.001)
        .collect();
    let (mut write_s, mut load_s) = (f64::INFINITY, f64::INFINITY);
    let tag = SaveTag {
        run_id: "bench".into(),
        attempt: 0,
        identity: proto::checkpoint::Identity::train(&Default::default()),
    };
    for round in 0..2 {
        let root = std::path::Path::new(dir).join(format!("round-{round}"));
        let store = DirStore::new(&root);
        let t0 = Instant::now();
        for r in 0..shards {
            write_shard(&store, &tag, 1, r, shards, &[("w", &data)]).unwrap();
        }
        commit(
            &store,
            &tag,
            1,
            shards,
            &[("w", data.len())],
            BTreeMap::new(),
            1,
        )
        .unwrap();
        write_s = write_s.min(t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        let (loaded, _) = load_latest(&store).unwrap();
        load_s = load_s.min(t1.elapsed().as_secs_f64());
        assert_eq!(loaded.unwrap().tensors["w"], data);
        std::fs::remove_dir_all(&root).unwrap();
    }
    let gb = (mib << 20) as f64 / 1e9;
    println!(
        "{}",
        serde_json::json!({"mib": mib, "shards": shards, "write_s": write_s, "write_gbps": gb / write_s, "load_verify_s": load_s, "load_gbps": gb / load_s})
    );
}

//! Property test of the checkpoint loader: random corruption of the newest
//! checkpoint folder (a flipped byte anywhere, a truncated or deleted or
//! extended file, an edited manifest) never loads a wrong state: it loads
//! the newest one exactly (when the damage changed nothing that matters),
//! or skips it saying why and loads the older one exactly.

use proptest::prelude::*;
use proto::checkpoint::Identity;
use std::collections::BTreeMap;
use worker::checkpoint::{commit, load_latest_into, write_shard, DirStore, Expect, SaveTag};

#[derive(Debug, Clone)]
enum Damage {
    Flip { file: usize, at: usize, bits: u8 },
    Truncate { file: usize, keep: usize },
    Delete { file: usize },
    Append { file: usize, bytes: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<usize>(), 1u8..=255).prop_map(|(file, at, bits)| Damage::Flip {
            file,
            at,
            bits
        }),
        (any::<usize>(), any::<usize>()).prop_map(|(file, keep)| Damage::Truncate { file, keep }),
        any::<usize>().prop_map(|file| Damage::Delete { file }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(file, bytes)| Damage::Append { file, bytes }),
    ]
}

fn tensors(step: u64) -> (Vec<f32>, Vec<f32>) {
    let a = (0..257).map(|i| (i as f32 + step as f32) * 0.25).collect();
    let b = (0..31).map(|i| -(i as f32) - step as f32).collect();
    (a, b)
}

fn save(store: &DirStore, step: u64, world: usize) {
    let tag = SaveTag {
        run_id: "p".into(),
        attempt: 0,
        identity: Identity::train(&Default::default()),
    };
    let (a, b) = tensors(step);
    for r in 0..world {
        write_shard(store, &tag, step, r, world, &[("a", &a), ("b", &b)]).unwrap();
    }
    let scalars = BTreeMap::from([("step".to_string(), step)]);
    commit(
        store,
        &tag,
        step,
        world,
        &[("a", a.len()), ("b", b.len())],
        scalars,
        3,
    )
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn corruption_never_loads_a_wrong_state(world in 1usize..4, damages in proptest::collection::vec(damage(), 1..4)) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "rm-ckpt-prop-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let store = DirStore::new(&root);
        save(&store, 10, world);
        save(&store, 20, world);
        let newest = root.join("step-0000000020");
        let mut files: Vec<_> = std::fs::read_dir(&newest).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        for d in &damages {
            match d {
                Damage::Flip { file, at, bits } => {
                    let f = &files[file % files.len()];
                    if let Ok(mut bytes) = std::fs::read(f) {
                        if !bytes.is_empty() {
                            let i = at % bytes.len();
                            bytes[i] ^= bits;
                            std::fs::write(f, bytes).unwrap();
                        }
                    }
                }
                Damage::Truncate { file, keep } => {
                    let f = &files[file % files.len()];
                    if let Ok(bytes) = std::fs::read(f) {
                        std::fs::write(f, &bytes[..keep % (bytes.len() + 1)]).unwrap();
                    }
                }
                Damage::Delete { file } => {
                    let _ = std::fs::remove_file(&files[file % files.len()]);
                }
                Damage::Append { file, bytes } => {
                    let f = &files[file % files.len()];
                    if let Ok(mut old) = std::fs::read(f) {
                        old.extend_from_slice(bytes);
                        std::fs::write(f, old).unwrap();
                    }
                }
            }
        }
        let changed = files.iter().zip(&before).any(|(f, b)| std::fs::read(f).ok().as_ref() != Some(b));
        let (mut a, mut b) = (vec![0f32; 257], vec![0f32; 31]);
        let id = Identity::train(&Default::default());
        let (loaded, skipped) = load_latest_into(
            &store,
            &mut [("a", &mut a), ("b", &mut b)],
            Expect { identity: &id, allow_mismatch: false },
        ).unwrap();
        let loaded = loaded.expect("the older checkpoint is intact");
        // Whatever loaded, it is exactly what was saved at that step.
        let (wa, wb) = tensors(loaded.step);
        prop_assert_eq!(&a, &wa);
        prop_assert_eq!(&b, &wb);
        prop_assert_eq!(loaded.scalars.get("step"), Some(&loaded.step));
        if loaded.step == 10 {
            // The newest was skipped, and it says why.
            prop_assert!(changed);
            prop_assert!(skipped.iter().any(|s| s.dir == "step-0000000020" && s.to_string().len() > 40), "{:?}", skipped);
        } else {
            prop_assert!(skipped.is_empty(), "{:?}", skipped);
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}

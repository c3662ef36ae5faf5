//! The NCCL unique id travels from rank 0 to every rank through the
//! launcher's rendezvous. With NCCL installed the id is a real
//! ncclGetUniqueId; without it (this CI) the transport is tested with fixed
//! bytes, and the test says which it did.

use launcher::rendezvous::Rendezvous;
use proto::spec::{Collective, Workload};
use std::time::Duration;
use worker::client::Control;
use worker::env::WorkerEnv;

fn env(endpoint: &str, rank: u32, world: u32) -> WorkerEnv {
    WorkerEnv {
        rank,
        local_rank: rank,
        world_size: world,
        local_world_size: world,
        node_rank: 0,
        run_id: "t".into(),
        restart_count: 0,
        rdzv_endpoint: endpoint.into(),
        token: "tok".into(),
        node_addr: "127.0.0.2".into(),
        workload: Workload::Gemm(Default::default()),
        collective: Collective::default(),
        heartbeat_interval_ms: 500,
        threads: 1,
        cuda: false,
        nccl: false,
        checkpoint: Default::default(),
        notices: None,
        fault_mid_checkpoint: false,
        fault_at_step: None,
        keep_survivors: false,
        fault_attempts: 1,
        fault_preflight_slow_node: None,
        sigterm_is_notice: false,
        preflight: false,
        attempt_dir: None,
        program_signal: None,
        resume: None,
    }
}

#[test]
fn rank_zeros_nccl_id_reaches_every_rank() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (rdzv, _events) = rt
        .block_on(Rendezvous::start("127.0.0.1:0", "tok".into()))
        .unwrap();
    let world = 3;
    rdzv.new_round(0, 1, world, &[]);
    let endpoint = rdzv.addr().to_string();
    let real = gpu::nccl_unique_id();
    let expected: [u8; 128] = match &real {
        Ok(id) => {
            eprintln!("NCCL present: sharing a real ncclGetUniqueId");
            *id
        }
        Err(e) => {
            eprintln!("NCCL absent ({e}): testing the transport with fixed bytes");
            std::array::from_fn(|i| (i * 13 + 1) as u8)
        }
    };
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                let e = env(&endpoint, rank, world);
                let mut ctl = Control::connect(&e).unwrap();
                ctl.join(&e, "127.0.0.2:1").unwrap();
                worker::nccl_id::share(&mut ctl, rank, Duration::from_secs(10), || Ok(expected))
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), expected);
    }
    // A later round starts without the old id.
    rdzv.new_round(1, 1, 1, &[]);
    let mut e = env(&endpoint, 0, 1);
    e.restart_count = 1;
    let mut ctl = Control::connect(&e).unwrap();
    ctl.join(&e, "127.0.0.2:1").unwrap();
    assert_eq!(
        ctl.kv_get(worker::nccl_id::KEY, Duration::ZERO).unwrap(),
        None
    );
}

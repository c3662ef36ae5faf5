//! The worker's engine, as a library so its parts are unit-tested in-process.

pub mod checkpoint;
pub mod client;
pub mod collective;
pub mod env;
mod error;
pub mod hier;
pub mod matmul;
pub mod nccl_coll;
pub mod nccl_id;
pub mod notices;
pub mod preflight;
pub mod progress;
pub mod ring;
mod rounds;
pub mod shm;
pub mod workload;

pub use error::{write_error_file, WorkerError};
use proto::exit::WorkerExit;

/// The node's GPU telemetry (the worker of local rank 0 of a GPU job): an
/// NVML sample every 5 s, sent with the next heartbeat, so the launcher
/// sees every node's GPUs, not only its own machine's. A node whose NVML
/// cannot be loaded sends none (the launcher's metrics say so).
fn sample_gpus(progress: std::sync::Arc<progress::Progress>) {
    let spawned = std::thread::Builder::new()
        .name("gpu-telemetry".into())
        .spawn(move || loop {
            match gpu::telemetry::sample() {
                Ok(s) => progress.set_gpus(s),
                Err(e) => {
                    eprintln!("ringmaster-worker: no GPU telemetry from this node: {e}");
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_secs(5));
        });
    if let Err(e) = spawned {
        eprintln!("ringmaster-worker: no GPU telemetry thread: {e}");
    }
}

/// Run the worker; returns the process exit code.
/// The `ringmaster-worker` binary: `--check-libs` says which GPU libraries
/// this process can load through its environment alone (what `ringmaster
/// doctor` asks a worker); otherwise the worker runs (`run`).
pub fn main() -> i32 {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("ringmaster-worker {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    if std::env::args().nth(1).as_deref() == Some("--check-libs") {
        let checks = gpu::libs::check_loadable();
        println!("{}", serde_json::to_string(&checks).expect("serialises"));
        return 0;
    }
    run()
}

pub fn run() -> i32 {
    let env = match env::WorkerEnv::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ringmaster-worker: {e}");
            return WorkerExit::BadEnvironment.code();
        }
    };
    let tag = format!("[rank {}]", env.rank);
    let progress = progress::Progress::new();
    if env.cuda && env.local_rank == 0 {
        sample_gpus(progress.clone());
    }
    match std::panic::catch_unwind(|| rounds::run_with(&env, &progress)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("{tag} error: {e}");
            write_error_file(&env, &progress, e.exit().code(), &e.to_string());
            e.exit().code()
        }
        Err(_) => {
            eprintln!("{tag} internal error (panic)");
            write_error_file(&env, &progress, WorkerExit::Internal.code(), "panic");
            WorkerExit::Internal.code()
        }
    }
}

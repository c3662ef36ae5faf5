//! ringmaster-worker: one process per device. Reads the env contract, joins
//! the launcher's rendezvous, builds the collective, runs the workload.

fn main() {
    // `--check-libs`: which GPU libraries this process can load through
    // its environment alone (what `ringmaster doctor` asks a worker).
    if std::env::args().nth(1).as_deref() == Some("--check-libs") {
        let checks = gpu::libs::check_loadable();
        println!("{}", serde_json::to_string(&checks).expect("serialises"));
        std::process::exit(0);
    }
    std::process::exit(worker::run());
}

//! ringmaster-worker: one process per device. Reads the env contract, joins
//! the launcher's rendezvous, builds the collective, runs the workload.

fn main() {
    std::process::exit(worker::run());
}

//! `ringmaster-worker`: one process per device; everything lives in the
//! worker library (`worker::main`).

fn main() {
    std::process::exit(worker::main());
}

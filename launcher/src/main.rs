//! `ringmaster`: thin entry point; everything lives in the launcher library.

fn main() {
    std::process::exit(launcher::main());
}

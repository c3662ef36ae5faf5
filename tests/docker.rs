//! deploy/docker/Dockerfile, built here as far as a machine without a
//! container runtime can: each COPY is done into a scratch root and each
//! RUN runs there with `python` a fresh venv's, so the wheel the image
//! installs is this tree's (scripts/test.sh builds it into target/wheels)
//! and the binaries it puts on the PATH answer. The CUDA library line is
//! not run again: it names the wheels scripts/test.sh installs for the GPU
//! library tests, which the test checks instead.

use ringmaster_suite::*;
use std::process::Command;

#[test]
fn the_dockerfile_steps_install_binaries_that_run() {
    let root = scratch("docker");
    let dockerfile = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    let venv = root.join("venv");
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(ok.success());
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let test_sh = std::fs::read_to_string(repo().join("scripts/test.sh")).unwrap();
    let (mut copies, mut runs) = (0, 0);
    let mut output = String::new();
    for line in dockerfile.lines() {
        if let Some(rest) = line.strip_prefix("COPY ") {
            let (src, dest) = rest.split_once(' ').expect("COPY src dest");
            let (dir, pattern) = src.rsplit_once('/').unwrap();
            let (prefix, suffix) = pattern.split_once('*').unwrap_or((pattern, ""));
            let found: Vec<_> = std::fs::read_dir(repo().join(dir))
                .unwrap_or_else(|e| panic!("COPY {src}: {e} (scripts/test.sh builds the wheel)"))
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.starts_with(prefix) && n.ends_with(suffix)
                })
                .collect();
            assert_eq!(found.len(), 1, "COPY {src}: {found:?}");
            let to = root.join(dest.trim_start_matches('/'));
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(&found[0], to.join(found[0].file_name().unwrap())).unwrap();
            copies += 1;
        } else if let Some(cmd) = line.strip_prefix("RUN ") {
            if cmd.contains("nvidia-") {
                // The same wheels the GPU library tests install.
                for w in ["nvidia-nccl-cu13", "nvidia-cublas"] {
                    assert!(cmd.contains(w) && test_sh.contains(w), "{w}");
                }
                eprintln!("not run here (the suite installs these for tests/gpu_libs.rs): {cmd}");
                continue;
            }
            let cmd = cmd.replace("/tmp/", &format!("{}/tmp/", root.display()));
            let out = Command::new("bash")
                .args(["-c", &cmd])
                .env("PATH", &path)
                .env_remove("PYTHONPATH")
                .current_dir(&root)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "RUN {cmd}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            output.push_str(&String::from_utf8_lossy(&out.stdout));
            runs += 1;
        }
    }
    assert_eq!((copies, runs), (1, 2));
    assert!(output.contains("ringmaster 0.1.0"), "{output}");
    assert!(output.contains("ringmaster-worker 0.1.0"), "{output}");
    // The binaries came from the wheel into the venv, not from target/.
    assert!(venv.join("bin/ringmaster").is_file());
    assert!(venv.join("bin/ringmaster-worker").is_file());
}

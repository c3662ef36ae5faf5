//! The device MLP's element-wise kernels are PTX written by hand
//! (gpu/src/kernels/mlp.ptx); the driver JIT-compiles them on the GPU.
//! Here, without a GPU, the CUDA toolkit's assembler checks that they
//! assemble for the architectures ringmaster targets (A100 and H100/H200),
//! and that every kernel the Rust side launches is there.

use std::path::PathBuf;
use std::process::Command;

fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RINGMASTER_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let on_path = Command::new("ptxas").arg("--version").output();
    on_path
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("ptxas"))
}

#[test]
fn the_mlp_kernels_assemble_for_a100_and_h100() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ptx = root.join("gpu/src/kernels/mlp.ptx");
    let text = std::fs::read_to_string(&ptx).unwrap();
    // Every kernel mlp_cuda.rs loads by name is defined.
    let rust = std::fs::read_to_string(root.join("gpu/src/mlp_cuda.rs")).unwrap();
    let mut loaded = 0;
    for name in rust.split('"').filter(|s| s.starts_with("rm_")) {
        assert!(
            text.contains(&format!(".visible .entry {name}(")),
            "{name} is launched but not in mlp.ptx"
        );
        loaded += 1;
    }
    assert!(loaded >= 6, "found {loaded} kernel names in mlp_cuda.rs");
    let Some(ptxas) = ptxas() else {
        eprintln!("SKIPPED: no ptxas (set RINGMASTER_PTXAS, or pip install nvidia-cuda-nvcc); the PTX was not assembled");
        return;
    };
    let out_dir = std::env::temp_dir().join(format!("ringmaster-test-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    for arch in ["sm_80", "sm_90"] {
        let out = Command::new(&ptxas)
            .args(["-arch", arch, "-v"])
            .arg(&ptx)
            .arg("-o")
            .arg(out_dir.join(format!("mlp-{arch}.cubin")))
            .output()
            .expect("run ptxas");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ptxas -arch {arch}: {log}");
        // One "Compiling entry function" line per kernel.
        let entries = log.matches("Compiling entry function").count();
        assert_eq!(entries, text.matches(".visible .entry").count(), "{log}");
        eprintln!("ptxas -arch {arch}: {entries} kernels assembled");
    }
    std::fs::remove_dir_all(&out_dir).unwrap();
}

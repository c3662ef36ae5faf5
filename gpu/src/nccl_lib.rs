//! Finding NCCL and making it loadable for cudarc. cudarc looks for
//! `libnccl.so` (and a few versioned names), but the nvidia-nccl-cu13 wheel
//! ships only `libnccl.so.2`; the launcher makes a folder with a
//! `libnccl.so` link to the library it finds and puts that folder first on
//! the workers' LD_LIBRARY_PATH.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NAMES: &[&str] = &["libnccl.so.2", "libnccl.so"];

/// Folders where NCCL usually lives, besides LD_LIBRARY_PATH and Python.
const SYSTEM_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/local/cuda/lib64",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/lib",
];

/// The first NCCL library in `dirs`.
pub fn find_in(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .flat_map(|d| NAMES.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// The `lib` folder of the `nvidia.nccl` Python package, if Python has one
/// (the PyTorch/CUDA-13 wheels' NCCL). Bounded to 10 s.
pub fn python_nccl_dir() -> Option<PathBuf> {
    let python = std::env::var("RINGMASTER_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .args([
            "-c",
            "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let t0 = std::time::Instant::now();
    loop {
        match child.try_wait().ok()? {
            Some(status) if status.success() => break,
            Some(_) => return None,
            None if t0.elapsed() > Duration::from_secs(10) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    let dir = PathBuf::from(out.trim());
    dir.is_dir().then_some(dir)
}

/// Find NCCL: `explicit` (a file or folder), then $RINGMASTER_NCCL_LIB,
/// LD_LIBRARY_PATH, Python's nvidia.nccl package, and the system folders.
pub fn find_libnccl(explicit: Option<&Path>) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let from_setting = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("RINGMASTER_NCCL_LIB").map(PathBuf::from));
    if let Some(p) = from_setting {
        if p.is_file() {
            return Some(p);
        }
        dirs.push(p);
    }
    if let Some(ld) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&ld));
    }
    if let Some(found) = find_in(&dirs) {
        return Some(found);
    }
    let mut later: Vec<PathBuf> = python_nccl_dir().into_iter().collect();
    later.extend(SYSTEM_DIRS.iter().map(PathBuf::from));
    find_in(&later)
}

/// Make `dir/libnccl.so` point at `lib` (replacing an older link) and return
/// `dir`, to be put first on LD_LIBRARY_PATH.
pub fn prepare_dir(lib: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let link = dir.join("libnccl.so");
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link)?;
    }
    let target = std::fs::canonicalize(lib)?;
    std::os::unix::fs::symlink(&target, &link)?;
    Ok(dir.to_path_buf())
}

/// LD_LIBRARY_PATH with `dir` first.
pub fn ld_library_path_with(dir: &Path) -> String {
    let mut parts = vec![dir.to_path_buf()];
    if let Some(ld) = std::env::var_os("LD_LIBRARY_PATH") {
        parts.extend(std::env::split_paths(&ld).filter(|p| p != dir));
    }
    std::env::join_paths(parts)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_wheel_name_and_links_it() {
        let root = std::env::temp_dir().join(format!("rm-nccl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let wheel = root.join("site-packages/nvidia/nccl/lib");
        std::fs::create_dir_all(&wheel).unwrap();
        std::fs::write(wheel.join("libnccl.so.2"), b"not really a library").unwrap();
        let found = find_in(&[root.join("nowhere"), wheel.clone()]).unwrap();
        assert_eq!(found, wheel.join("libnccl.so.2"));
        assert_eq!(find_libnccl(Some(&found)), Some(found.clone()));
        let dir = prepare_dir(&found, &root.join("link")).unwrap();
        let target = std::fs::read_link(dir.join("libnccl.so")).unwrap();
        assert_eq!(target, std::fs::canonicalize(&found).unwrap());
        // Idempotent: a second run replaces the link.
        prepare_dir(&found, &root.join("link")).unwrap();
        assert!(ld_library_path_with(&dir).starts_with(dir.to_str().unwrap()));
        assert_eq!(find_in(&[root.join("nowhere")]), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

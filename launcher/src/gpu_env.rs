//! The GPU libraries as a worker will see them: ask a real worker process,
//! started with the environment a run gives it, what it can load (`doctor`
//! uses this, so that "NCCL present" means "workers can load NCCL").

use gpu::libs::{LibCheck, Located};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `<worker_bin> --check-libs` under the LD_LIBRARY_PATH a run would
/// give it (links in a private temporary folder, removed after), bounded
/// to 30 s.
pub fn worker_check(worker_bin: &Path, libs: &Located) -> Result<Vec<LibCheck>, String> {
    const LD: &str = proto::contract::WorkerContract::library_path_variable();
    let dir = std::env::temp_dir().join(format!("ringmaster-doctor-{}", std::process::id()));
    let result = (|| {
        let ld = libs
            .environment(&dir.join("lib"), std::env::var(LD).ok().as_deref())
            .map_err(|e| format!("cannot link the libraries into {}: {e}", dir.display()))?;
        let mut child = Command::new(worker_bin)
            .arg("--check-libs")
            .env(LD, &ld)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", worker_bin.display()))?;
        let t0 = Instant::now();
        let status = loop {
            match child.try_wait().map_err(|e| e.to_string())? {
                Some(s) => break s,
                None if t0.elapsed() > Duration::from_secs(30) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("the worker did not answer within 30 s".to_string());
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            std::io::Read::read_to_string(&mut s, &mut out).map_err(|e| e.to_string())?;
        }
        if !status.success() {
            return Err(format!("the worker's check ended with {status}"));
        }
        serde_json::from_str(out.trim()).map_err(|e| format!("the worker's answer: {e}: {out}"))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

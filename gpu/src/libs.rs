//! Finding the CUDA libraries a worker loads (NCCL, cuBLAS, cuBLASLt) where
//! a PyTorch machine has them, and making them loadable by cudarc.
//!
//! cudarc dlopens bare names: `libnccl.so` (and `libnccl.so.13`, `.12`, ...,
//! never `.2`), `libcublas.so.13`, `libcublasLt.so.13`. The pip wheels put
//! them where no search path looks: NCCL's `nvidia/nccl/lib/libnccl.so.2`
//! (the only file that wheel ships), CUDA 13's cuBLAS under
//! `nvidia/cu13/lib`. So:
//! - workers get an LD_LIBRARY_PATH (read only at process start) with a
//!   folder holding a `libnccl.so` link to the NCCL found, then the folders
//!   of the libraries found (`environment`);
//! - a process that is already running (the launcher's own probe, a worker
//!   started some other way) loads cuBLAS and cuBLASLt by absolute path
//!   first (`preload`): glibc then answers cudarc's bare-name dlopen with
//!   the loaded library, which it matches by SONAME. NCCL's SONAME
//!   (`libnccl.so.2`) is not a name cudarc asks for, so NCCL is probed by
//!   absolute path in-process and reaches workers through the link.
//!
//! Where each is looked for, in order: `$RINGMASTER_<LIB>_LIB` (a file or
//! folder), LD_LIBRARY_PATH, the `nvidia` Python packages (one Python child,
//! bounded to 10 s, once per process), the usual system folders.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// A library cudarc loads for a GPU worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lib {
    Nccl,
    Cublas,
    CublasLt,
}

impl Lib {
    pub const ALL: [Lib; 3] = [Lib::Nccl, Lib::Cublas, Lib::CublasLt];

    /// File names it is found under, best first.
    pub fn file_names(self) -> &'static [&'static str] {
        match self {
            Lib::Nccl => &["libnccl.so.2", "libnccl.so"],
            Lib::Cublas => &["libcublas.so.13"],
            Lib::CublasLt => &["libcublasLt.so.13"],
        }
    }

    /// The name cudarc asks the dynamic loader for (the link's name when
    /// the file found has another).
    pub fn load_name(self) -> &'static str {
        match self {
            Lib::Nccl => "libnccl.so",
            Lib::Cublas => "libcublas.so.13",
            Lib::CublasLt => "libcublasLt.so.13",
        }
    }

    /// The setting that names it explicitly (a file or a folder).
    pub fn env_var(self) -> &'static str {
        match self {
            Lib::Nccl => "RINGMASTER_NCCL_LIB",
            Lib::Cublas => "RINGMASTER_CUBLAS_LIB",
            Lib::CublasLt => "RINGMASTER_CUBLASLT_LIB",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Lib::Nccl => "NCCL",
            Lib::Cublas => "cuBLAS",
            Lib::CublasLt => "cuBLASLt",
        }
    }

    /// How to get it, for messages.
    pub fn install_hint(self) -> &'static str {
        match self {
            Lib::Nccl => "pip install nvidia-nccl-cu13, or set RINGMASTER_NCCL_LIB",
            Lib::Cublas | Lib::CublasLt => {
                "pip install nvidia-cublas (CUDA 13), install the CUDA 13 toolkit, or set RINGMASTER_CUBLAS_LIB / RINGMASTER_CUBLASLT_LIB"
            }
        }
    }
}

/// Folders where the libraries usually live, besides LD_LIBRARY_PATH and Python.
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/lib",
];

/// Where the search looks, in order (pure data, so the order is testable).
#[derive(Debug, Clone, Default)]
pub struct SearchPath {
    /// Per library, from its `RINGMASTER_<LIB>_LIB`.
    pub explicit: Vec<(Lib, PathBuf)>,
    pub ld_library_path: Vec<PathBuf>,
    pub python: Vec<PathBuf>,
    pub system: Vec<PathBuf>,
}

impl SearchPath {
    /// This process's search path, without Python's folders (see
    /// `python_lib_dirs`; `located` adds them only when needed).
    pub fn from_env() -> SearchPath {
        SearchPath {
            explicit: Lib::ALL
                .into_iter()
                .filter_map(|l| std::env::var_os(l.env_var()).map(|p| (l, PathBuf::from(p))))
                .filter(|(_, p)| !p.as_os_str().is_empty())
                .collect(),
            ld_library_path: std::env::var_os("LD_LIBRARY_PATH")
                .map(|v| {
                    std::env::split_paths(&v)
                        .filter(|p| !p.as_os_str().is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            python: Vec::new(),
            system: SYSTEM_DIRS.iter().map(PathBuf::from).collect(),
        }
    }

    /// The first file of `lib`: its explicit setting (a file, or a folder
    /// searched), then each folder in order.
    pub fn find(&self, lib: Lib) -> Option<PathBuf> {
        let in_dir = |d: &Path| {
            lib.file_names()
                .iter()
                .map(|n| d.join(n))
                .find(|p| p.is_file())
        };
        if let Some((_, p)) = self.explicit.iter().find(|(l, _)| *l == lib) {
            if p.is_file() {
                return Some(p.clone());
            }
            if let Some(f) = in_dir(p) {
                return Some(f);
            }
        }
        self.ld_library_path
            .iter()
            .chain(&self.python)
            .chain(&self.system)
            .find_map(|d| in_dir(d))
    }
}

/// The `lib` folders of the `nvidia` Python namespace packages (the wheels
/// PyTorch depends on: nvidia/nccl/lib, nvidia/cu13/lib, nvidia/cublas/lib,
/// ...), from `$RINGMASTER_PYTHON` or python3. Bounded to 10 s.
pub fn python_lib_dirs() -> Vec<PathBuf> {
    let python = std::env::var("RINGMASTER_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import os, nvidia\n\
        for p in nvidia.__path__:\n\
        \x20   for d in sorted(os.listdir(p)):\n\
        \x20       lib = os.path.join(p, d, 'lib')\n\
        \x20       if os.path.isdir(lib): print(lib)\n";
    let Ok(mut child) = Command::new(python)
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .stdin(std::process::Stdio::null())
        .spawn()
    else {
        return Vec::new();
    };
    let t0 = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return Vec::new(),
            Ok(None) if t0.elapsed() > Duration::from_secs(10) => {
                let _ = child.kill();
                let _ = child.wait();
                return Vec::new();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
    }
    out.lines()
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .collect()
}

/// The libraries found, by file.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Located {
    pub nccl: Option<PathBuf>,
    pub cublas: Option<PathBuf>,
    pub cublaslt: Option<PathBuf>,
}

impl Located {
    pub fn search(path: &SearchPath) -> Located {
        Located {
            nccl: path.find(Lib::Nccl),
            cublas: path.find(Lib::Cublas),
            cublaslt: path.find(Lib::CublasLt),
        }
    }

    pub fn get(&self, lib: Lib) -> Option<&Path> {
        match lib {
            Lib::Nccl => self.nccl.as_deref(),
            Lib::Cublas => self.cublas.as_deref(),
            Lib::CublasLt => self.cublaslt.as_deref(),
        }
    }

    /// Make the links a worker needs in `dir` (`libnccl.so` -> the NCCL
    /// found, replacing older links) and return the LD_LIBRARY_PATH that
    /// lets a worker load every library found: `dir`, then the libraries'
    /// own folders, then `inherited` (the worker's LD_LIBRARY_PATH
    /// otherwise), without repeats.
    pub fn environment(&self, dir: &Path, inherited: Option<&str>) -> std::io::Result<String> {
        std::fs::create_dir_all(dir)?;
        let mut parts: Vec<PathBuf> = vec![dir.to_path_buf()];
        for lib in Lib::ALL {
            let Some(file) = self.get(lib) else { continue };
            let target = std::fs::canonicalize(file)?;
            if file.file_name().and_then(|f| f.to_str()) != Some(lib.load_name()) {
                let link = dir.join(lib.load_name());
                if link.symlink_metadata().is_ok() {
                    std::fs::remove_file(&link)?;
                }
                std::os::unix::fs::symlink(&target, &link)?;
            }
            if let Some(parent) = file.parent() {
                parts.push(parent.to_path_buf());
            }
        }
        if let Some(ld) = inherited {
            parts.extend(std::env::split_paths(ld).filter(|p| !p.as_os_str().is_empty()));
        }
        let mut seen = std::collections::HashSet::new();
        parts.retain(|p| seen.insert(p.clone()));
        std::env::join_paths(parts)
            .map(|s| s.to_string_lossy().into_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }
}

/// This process's search, done once (the Python child runs at most once per
/// process, and not at all when LD_LIBRARY_PATH has every library: every
/// probe, GEMM and device open after the first reuses it).
pub fn located() -> &'static Located {
    static L: OnceLock<Located> = OnceLock::new();
    L.get_or_init(|| {
        let mut path = SearchPath::from_env();
        let system = std::mem::take(&mut path.system);
        let first = Located::search(&path);
        if Lib::ALL.iter().all(|l| first.get(*l).is_some()) {
            // Everything on LD_LIBRARY_PATH already (a worker the launcher
            // started): no Python child.
            return first;
        }
        path.python = python_lib_dirs();
        path.system = system;
        Located::search(&path)
    })
}

/// Load cuBLASLt and cuBLAS by absolute path, once, and keep them loaded,
/// so that cudarc's later dlopen of `libcublas.so.13` in this process finds
/// them (glibc matches a loaded library by its SONAME). Returns what was
/// loaded, or why not.
pub fn preload() -> &'static Vec<(Lib, Result<PathBuf, String>)> {
    static P: OnceLock<Vec<(Lib, Result<PathBuf, String>)>> = OnceLock::new();
    P.get_or_init(|| {
        let found = located();
        // cuBLASLt first: cuBLAS needs it.
        [Lib::CublasLt, Lib::Cublas]
            .into_iter()
            .filter_map(|lib| {
                let path = found.get(lib)?.to_path_buf();
                // SAFETY: loading a library runs its initialisers; cuBLAS's
                // have no preconditions. The handle is leaked on purpose:
                // the library stays loaded for the process's life.
                let r = unsafe { libloading::Library::new(&path) }
                    .map(|l| {
                        std::mem::forget(l);
                        path
                    })
                    .map_err(|e| e.to_string());
                Some((lib, r))
            })
            .collect()
    })
}

/// The file a loaded library is mapped from (read from /proc/self/maps, so
/// only while something holds it loaded).
pub fn mapped_path(stem: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let prefix = format!("lib{stem}.");
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&prefix))
        })
        .map(str::to_string)
}

/// What a process could load by the names cudarc uses, with no help but
/// its environment (`ringmaster-worker --check-libs` prints this; `doctor`
/// runs it under the environment a worker gets).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LibCheck {
    pub lib: String,
    pub loaded: bool,
    /// The file the loader mapped.
    pub path: Option<String>,
    pub version: Option<String>,
    /// What the library answered beyond its version (NCCL: a unique id).
    pub detail: Option<String>,
}

/// Load NCCL, cuBLAS and cuBLASLt through cudarc, by its names only, and
/// ask each for its version (NCCL also for a unique id: no GPU needed).
pub fn check_loadable() -> Vec<LibCheck> {
    let check = |lib: &str, r: crate::probe::LibReport| LibCheck {
        lib: lib.into(),
        loaded: r.present,
        path: r.path,
        version: r.version,
        detail: None,
    };
    let mut nccl = check("nccl", crate::probe::nccl_by_name());
    if nccl.loaded {
        nccl.detail = Some(match cudarc::nccl::Id::new() {
            Ok(_) => "ncclGetUniqueId ok".into(),
            Err(e) => format!("ncclGetUniqueId failed: {e:?}"),
        });
    }
    vec![
        nccl,
        check("cublas", crate::probe::cublas_by_name()),
        check("cublaslt", crate::probe::cublaslt_by_name()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"not really a library").unwrap();
    }

    #[test]
    fn finds_the_wheels_and_links_what_cudarc_asks_for() {
        let root = std::env::temp_dir().join(format!("rm-libs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let nccl = root.join("site/nvidia/nccl/lib/libnccl.so.2");
        let cublas = root.join("site/nvidia/cu13/lib/libcublas.so.13");
        let lt = root.join("site/nvidia/cu13/lib/libcublasLt.so.13");
        for f in [&nccl, &cublas, &lt] {
            touch(f);
        }
        let sys_nccl = root.join("sys/libnccl.so");
        touch(&sys_nccl);
        let search = SearchPath {
            explicit: vec![],
            ld_library_path: vec![root.join("nowhere")],
            python: vec![
                root.join("site/nvidia/cu13/lib"),
                root.join("site/nvidia/nccl/lib"),
            ],
            system: vec![root.join("sys")],
        };
        let found = Located::search(&search);
        assert_eq!(
            found.nccl.as_deref(),
            Some(nccl.as_path()),
            "Python before the system"
        );
        assert_eq!(found.cublas.as_deref(), Some(cublas.as_path()));
        assert_eq!(found.cublaslt.as_deref(), Some(lt.as_path()));
        // An explicit setting wins (a file, or a folder).
        let s2 = SearchPath {
            explicit: vec![(Lib::Nccl, root.join("sys"))],
            ..search.clone()
        };
        assert_eq!(s2.find(Lib::Nccl).as_deref(), Some(sys_nccl.as_path()));
        // The worker's environment: the link folder first, then the
        // libraries' folders, then what it had; no repeats.
        let dir = root.join("run/lib");
        let ld = found
            .environment(
                &dir,
                Some(&format!(
                    "/opt/x:{}",
                    root.join("site/nvidia/cu13/lib").display()
                )),
            )
            .unwrap();
        let parts: Vec<&str> = ld.split(':').collect();
        assert_eq!(
            parts,
            vec![
                dir.to_str().unwrap(),
                root.join("site/nvidia/nccl/lib").to_str().unwrap(),
                root.join("site/nvidia/cu13/lib").to_str().unwrap(),
                "/opt/x",
            ]
        );
        let link = std::fs::read_link(dir.join("libnccl.so")).unwrap();
        assert_eq!(link, std::fs::canonicalize(&nccl).unwrap());
        // cuBLAS already has the name cudarc asks for: no link.
        assert!(dir.join("libcublas.so.13").symlink_metadata().is_err());
        // Again: the link is replaced, not an error.
        found.environment(&dir, None).unwrap();
        // Nothing found: nothing linked.
        let none = Located::search(&SearchPath::default());
        assert_eq!(none, Located::default());
        std::fs::remove_dir_all(&root).unwrap();
    }
}

//! Which GPU libraries can be loaded, from where, at which version, and how
//! many GPUs the driver sees. Every check loads the library first and only
//! then calls into it.

use crate::{cuda_version_string, GpuError, BUILD_CUDA_VERSION, MIN_DRIVER_FOR_BUILD};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LibReport {
    pub name: String,
    pub present: bool,
    /// Where the dynamic loader found it.
    pub path: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Probe {
    pub driver: LibReport,
    pub cublas: LibReport,
    pub cublaslt: LibReport,
    pub nccl: LibReport,
    pub nvml: LibReport,
    /// CUDA driver API version (cuDriverGetVersion), e.g. 13000.
    pub driver_cuda_version: Option<i32>,
    /// The kernel driver's version string from NVML, e.g. "580.82.07".
    pub driver_version: Option<String>,
    pub device_count: Option<i32>,
    /// NVIDIA_TF32_OVERRIDE as this process has it ("0" keeps FP32 GEMMs
    /// exact; "1" turns TF32 on behind the program's back).
    pub tf32_override: Option<String>,
    pub problems: Vec<String>,
}

use crate::libs::mapped_path;

fn report(name: &str, present: bool) -> LibReport {
    LibReport {
        name: name.into(),
        present,
        path: None,
        version: None,
    }
}

/// Load `path` directly and ask it for its NCCL version (for a libnccl.so.2
/// that cudarc's name search would not find).
pub fn nccl_version_at(path: &Path) -> Option<i32> {
    // SAFETY: loading NCCL runs its initialisers, which have no
    // preconditions; ncclGetVersion(int*) writes one int.
    unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let f: libloading::Symbol<unsafe extern "C" fn(*mut i32) -> i32> =
            lib.get(b"ncclGetVersion\0").ok()?;
        let mut v = 0;
        (f(&mut v) == 0).then_some(v)
    }
}

/// "23000" (NCCL >= 2.9 encoding: major*10000 + minor*100 + patch) -> "2.30.0".
pub fn nccl_version_string(v: i32) -> String {
    if v >= 10000 {
        format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100)
    }
}

/// This process's probe, made once (a worker's GEMM, device opens and
/// preflight all ask; the library search behind it runs Python once).
pub fn cached() -> &'static Probe {
    static P: std::sync::OnceLock<Probe> = std::sync::OnceLock::new();
    P.get_or_init(probe)
}

/// Probe every library. Paths are read from /proc/self/maps after a call
/// into the library (cudarc keeps a library it has called loaded), so they
/// name the file really loaded.
pub fn probe() -> Probe {
    let mut problems = Vec::new();
    // cuBLAS and cuBLASLt from the pip wheels' folders, which are on no
    // search path: loaded by absolute path, cudarc's bare names find them.
    for (lib, r) in crate::libs::preload() {
        if let Err(e) = r {
            problems.push(format!("{} could not be loaded: {e}", lib.label()));
        }
    }
    // SAFETY (all is_culib_present calls): they only try to dlopen the
    // library by its usual names.
    let driver_present = unsafe { cudarc::driver::sys::is_culib_present() };
    let mut driver = report("CUDA driver (libcuda)", driver_present);
    let mut driver_cuda_version = None;
    let mut device_count = None;
    if driver_present {
        let mut v = 0;
        // SAFETY: the library is present (checked above); the call writes one int.
        let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        if rc == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            driver_cuda_version = Some(v);
            driver.version = Some(format!("CUDA {}", cuda_version_string(v)));
        }
        driver.path = mapped_path("cuda");
        if let Some(p) = driver.path.as_deref().filter(|p| p.contains("/stubs/")) {
            problems.push(format!(
                "libcuda was loaded from {p}, a CUDA toolkit stub that cannot run anything; take the toolkit's stubs folder off LD_LIBRARY_PATH so the driver's libcuda.so.1 loads"
            ));
        }
        match cudarc::driver::result::init()
            .and_then(|_| cudarc::driver::result::device::get_count())
        {
            Ok(n) => device_count = Some(n),
            Err(e) => problems.push(format!("cuInit/cuDeviceGetCount failed: {e}")),
        }
    }
    let cublas = cublas_by_name();
    let cublaslt = cublaslt_by_name();
    let mut nccl = nccl_by_name();
    if let (false, Some(found)) = (nccl.present, crate::libs::located().nccl.as_deref()) {
        // Present under a name cudarc does not look for (the wheel's
        // libnccl.so.2): workers get a libnccl.so link to it. Present
        // means it loads and answers.
        nccl.path = Some(found.display().to_string());
        nccl.version = nccl_version_at(found).map(nccl_version_string);
        nccl.present = nccl.version.is_some();
        if !nccl.present {
            problems.push(format!(
                "{} was found but does not load or answer ncclGetVersion",
                found.display()
            ));
        }
    }
    let mut nvml = LibReport {
        name: "NVML (libnvidia-ml)".into(),
        present: false,
        path: None,
        version: None,
    };
    let mut driver_version = None;
    match crate::telemetry::nvml() {
        Ok(n) => {
            nvml.present = true;
            nvml.path = mapped_path("nvidia-ml");
            driver_version = n.sys_driver_version().ok();
            nvml.version = n.sys_nvml_version().ok();
        }
        Err(e) => {
            if driver_present {
                problems.push(format!("NVML could not start: {e}"));
            }
        }
    }
    Probe {
        driver,
        cublas,
        cublaslt,
        nccl,
        nvml,
        driver_cuda_version,
        driver_version,
        device_count,
        tf32_override: std::env::var("NVIDIA_TF32_OVERRIDE").ok(),
        problems,
    }
}

/// A library as cudarc finds it by its own names (`is_culib_present` only
/// tries the dlopen): loaded or not, its version, and the file (read from
/// /proc/self/maps after a call into it, which keeps it loaded).
fn by_name(
    name: &str,
    present: bool,
    stem: &str,
    version: impl FnOnce() -> Option<String>,
) -> LibReport {
    let mut r = report(name, present);
    if present {
        r.version = version();
        r.path = mapped_path(stem);
    }
    r
}

pub(crate) fn cublas_by_name() -> LibReport {
    use cudarc::cublas::sys::{cublasGetProperty, cublasStatus_t, libraryPropertyType as P};
    // SAFETY: only tries to dlopen cuBLAS by its usual names.
    let present = unsafe { cudarc::cublas::sys::is_culib_present() };
    by_name("cuBLAS (libcublas)", present, "cublas", || {
        let mut v = [0i32; 3];
        let ok = [P::MAJOR_VERSION, P::MINOR_VERSION, P::PATCH_LEVEL]
            .into_iter()
            .zip(v.iter_mut())
            // SAFETY: present (checked); each call writes one int.
            .all(|(p, o)| unsafe { cublasGetProperty(p, o) } == cublasStatus_t::CUBLAS_STATUS_SUCCESS);
        ok.then(|| format!("{}.{}.{}", v[0], v[1], v[2]))
    })
}

pub(crate) fn cublaslt_by_name() -> LibReport {
    // SAFETY: only tries to dlopen cuBLASLt by its usual names.
    let present = unsafe { cudarc::cublaslt::sys::is_culib_present() };
    by_name("cuBLASLt (libcublasLt)", present, "cublasLt", || {
        // SAFETY: present (checked); returns a plain number.
        Some(unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() }.to_string())
    })
}

pub(crate) fn nccl_by_name() -> LibReport {
    // SAFETY: only tries to dlopen NCCL by its usual names.
    let present = unsafe { cudarc::nccl::sys::is_culib_present() };
    by_name("NCCL (libnccl)", present, "nccl", || {
        cudarc::nccl::result::get_nccl_version()
            .ok()
            .map(nccl_version_string)
    })
}

impl Probe {
    /// Can this machine run CUDA work for this build? The error names the
    /// first missing piece and how to fix it.
    pub fn require_cuda(&self) -> Result<usize, GpuError> {
        if !self.driver.present {
            return Err(GpuError::NoDriver(
                "libcuda.so could not be loaded; install the NVIDIA driver (branch >= 580 for CUDA 13) or run on a GPU machine".into(),
            ));
        }
        if let Some(v) = self.driver_cuda_version {
            if v < BUILD_CUDA_VERSION {
                return Err(GpuError::DriverTooOld {
                    driver: cuda_version_string(v),
                    build: cuda_version_string(BUILD_CUDA_VERSION),
                    fix: format!(
                        "upgrade the NVIDIA driver to branch {MIN_DRIVER_FOR_BUILD} or newer"
                    ),
                });
            }
        }
        match self.device_count {
            Some(n) if n > 0 => Ok(n as usize),
            Some(_) => Err(GpuError::NoDevice(
                "0 devices; check CUDA_VISIBLE_DEVICES and nvidia-smi".into(),
            )),
            None => Err(GpuError::NoDevice(self.problems.join("; "))),
        }
    }

    /// As `require_cuda`, plus cuBLAS.
    pub fn require_cublas(&self) -> Result<usize, GpuError> {
        let n = self.require_cuda()?;
        if !self.cublas.present {
            return Err(GpuError::MissingLibrary {
                library: "libcublas".into(),
                hint: crate::libs::Lib::Cublas.install_hint().into(),
            });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_versions_decode_both_encodings() {
        assert_eq!(nccl_version_string(23000), "2.30.0");
        assert_eq!(nccl_version_string(21903), "2.19.3");
        assert_eq!(nccl_version_string(2804), "2.8.4");
    }

    #[test]
    fn probing_never_panics_and_explains_a_missing_driver() {
        let p = probe();
        if !p.driver.present {
            let e = p.require_cuda().unwrap_err();
            assert!(matches!(e, GpuError::NoDriver(_)), "{e}");
            assert!(e.to_string().contains("libcuda.so"), "{e}");
            assert!(p.device_count.is_none());
        } else {
            eprintln!("a CUDA driver is present here: {:?}", p.driver);
        }
    }
}

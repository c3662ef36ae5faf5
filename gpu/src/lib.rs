//! The GPU side of ringmaster, usable on machines without any: every CUDA,
//! cuBLAS, NCCL and NVML library is loaded at run time and probed before
//! use (cudarc panics on a missing library; this crate never lets it), so
//! the launcher and worker build and run everywhere and say exactly what is
//! missing where a GPU is needed.

pub mod blas;
pub mod cuda_gemm;
pub mod doctor;
pub mod libs;
pub mod mlp;
pub mod mlp_cuda;
pub mod nccl_comm;
pub mod nccl_sweep;
pub mod probe;
pub mod telemetry;
pub mod topology;
pub mod virt;

/// The CUDA version this build targets (cudarc's `cuda-13000` feature).
pub const BUILD_CUDA_VERSION: i32 = 13000;
/// The oldest Linux driver branch that supports CUDA 13.0.
pub const MIN_DRIVER_FOR_BUILD: &str = "580";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GpuError {
    #[error("no NVIDIA driver: {0}")]
    NoDriver(String),
    #[error("the CUDA driver reports no GPU ({0})")]
    NoDevice(String),
    #[error("{library} not found ({hint})")]
    MissingLibrary { library: String, hint: String },
    #[error("driver too old: it supports CUDA {driver}, this build targets CUDA {build}; {fix}")]
    DriverTooOld {
        driver: String,
        build: String,
        fix: String,
    },
    #[error("NVML: {0}")]
    Nvml(String),
    #[error("NCCL: {0}")]
    Nccl(String),
}

/// "13000" -> "13.0".
pub fn cuda_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// A fresh NCCL unique id (ncclGetUniqueId) as plain bytes, for rank 0 to
/// publish through the rendezvous. Needs only the NCCL library, not a GPU.
pub fn nccl_unique_id() -> Result<[u8; 128], GpuError> {
    // SAFETY: only tries to dlopen NCCL by its usual names.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Err(GpuError::MissingLibrary {
            library: "libnccl.so".into(),
            hint: "the launcher puts a libnccl.so link to the NCCL it finds first on the workers' LD_LIBRARY_PATH; see `ringmaster doctor`".into(),
        });
    }
    let id = cudarc::nccl::Id::new().map_err(|e| GpuError::MissingLibrary {
        library: "NCCL".into(),
        hint: format!("ncclGetUniqueId failed: {e:?}"),
    })?;
    Ok(id.internal().map(|c| c as u8))
}

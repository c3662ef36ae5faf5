//! The GPU side of ringmaster, usable on machines without any: every CUDA,
//! cuBLAS, NCCL and NVML library is loaded at run time and probed before
//! use (cudarc panics on a missing library; this crate never lets it), so
//! the launcher and worker build and run everywhere and say exactly what is
//! missing where a GPU is needed.

pub mod doctor;
pub mod nccl_lib;
pub mod probe;
pub mod telemetry;
pub mod topology;

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
}

/// "13000" -> "13.0".
pub fn cuda_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

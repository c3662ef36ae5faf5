//! cudarc's `CudaBlas` with a drop that cannot panic. cudarc unwraps
//! `cublasDestroy` when a handle is dropped; after a sticky CUDA error (a
//! kernel that faulted) that call fails, and the panic would replace the
//! worker's real error (and its exit code) with "internal error". Here a
//! failed destroy is reported on stderr and otherwise ignored: the process
//! is about to end with the error that caused it.

use cudarc::cublas::CudaBlas;
use std::mem::ManuallyDrop;
use std::panic::AssertUnwindSafe;

pub struct Blas(ManuallyDrop<CudaBlas>);

impl Blas {
    pub fn new(
        stream: std::sync::Arc<cudarc::driver::CudaStream>,
    ) -> Result<Blas, cudarc::cublas::result::CublasError> {
        CudaBlas::new(stream).map(|b| Blas(ManuallyDrop::new(b)))
    }
}

impl std::ops::Deref for Blas {
    type Target = CudaBlas;
    fn deref(&self) -> &CudaBlas {
        &self.0
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: taken once, here; self.0 is not used again.
        let inner = unsafe { ManuallyDrop::take(&mut self.0) };
        if std::panic::catch_unwind(AssertUnwindSafe(move || drop(inner))).is_err() {
            eprintln!("cuBLAS: the handle could not be destroyed after an earlier CUDA error (ignored; that error is the one reported)");
        }
    }
}

//! An NCCL communicator with a watchdog. cudarc's safe `Comm` initialises
//! in blocking mode and hides its handle, so a peer that never arrives (or
//! dies mid-collective) would hang the worker for as long as NCCL waits.
//! Here the communicator is created non-blocking (`ncclConfig_t.blocking =
//! 0`), every call is followed by polling `ncclCommGetAsyncError` and the
//! stream, and past the timeout the communicator is aborted
//! (`ncclCommAbort`) and the call returns an error naming the operation: a
//! hang becomes an error in seconds, and the launcher's restart policy takes
//! over.
//!
//! Untested on a GPU so far: scripts/gpu-check.sh exercises it on a lent
//! machine.

use crate::mlp_cuda::Device;
use crate::GpuError;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use cudarc::nccl::{result as nr, sys as ns};
use std::ffi::{c_void, CStr};
use std::time::{Duration, Instant};

/// Element types NCCL moves for the host-side collectives.
pub trait NcclElem:
    cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy + Default
{
    const DT: ns::ncclDataType_t;
}
impl NcclElem for f32 {
    const DT: ns::ncclDataType_t = ns::ncclDataType_t::ncclFloat32;
}
impl NcclElem for f64 {
    const DT: ns::ncclDataType_t = ns::ncclDataType_t::ncclFloat64;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Sum,
    Avg,
}

impl Op {
    fn nccl(self) -> ns::ncclRedOp_t {
        match self {
            Op::Sum => ns::ncclRedOp_t::ncclSum,
            Op::Avg => ns::ncclRedOp_t::ncclAvg,
        }
    }
}

/// NCCL_CONFIG_INITIALIZER (nccl.h): every tunable undefined, so NCCL
/// takes its defaults and the environment (NCCL_* variables).
fn config(blocking: bool) -> ns::ncclConfig_t {
    const UNDEF: i32 = i32::MIN;
    let mut c = ns::ncclConfig_t {
        size: std::mem::size_of::<ns::ncclConfig_t>(),
        magic: 0xcafe_beef,
        // NCCL_VERSION(2, 30, 0): the header these bindings follow.
        version: 23000,
        blocking: UNDEF,
        cgaClusterSize: UNDEF,
        minCTAs: UNDEF,
        maxCTAs: UNDEF,
        netName: std::ptr::null(),
        splitShare: UNDEF,
        trafficClass: UNDEF,
        commName: std::ptr::null(),
        collnetEnable: UNDEF,
        CTAPolicy: UNDEF,
        shrinkShare: UNDEF,
        nvlsCTAs: UNDEF,
        nChannelsPerNetPeer: UNDEF,
        nvlinkCentricSched: UNDEF,
        graphUsageMode: UNDEF,
        numRmaCtx: UNDEF,
        maxP2pPeers: UNDEF,
    };
    c.blocking = i32::from(blocking);
    c
}

fn describe(r: ns::ncclResult_t) -> String {
    // SAFETY: ncclGetErrorString returns a static string for any code.
    let s = unsafe { ns::ncclGetErrorString(r) };
    if s.is_null() {
        format!("{r:?}")
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        format!("{r:?}: {}", unsafe { CStr::from_ptr(s) }.to_string_lossy())
    }
}

pub struct NcclComm {
    comm: ns::ncclComm_t,
    dev: Device,
    pub rank: usize,
    pub world: usize,
    timeout: Duration,
    aborted: bool,
}

impl NcclComm {
    /// ncclCommInitRankConfig, non-blocking, waited for up to `timeout`
    /// (a rank that never joins aborts the others' set-up).
    pub fn init(
        dev: &Device,
        rank: usize,
        world: usize,
        id: [u8; 128],
        timeout: Duration,
    ) -> Result<NcclComm, GpuError> {
        // SAFETY: only tries to dlopen NCCL.
        if !unsafe { ns::is_culib_present() } {
            return Err(GpuError::MissingLibrary {
                library: "libnccl.so".into(),
                hint: "the launcher puts a libnccl.so link to the NCCL it finds first on the workers' LD_LIBRARY_PATH; see `ringmaster doctor`".into(),
            });
        }
        dev.ctx
            .bind_to_thread()
            .map_err(|e| GpuError::Nccl(format!("CUDA context: {e:?}")))?;
        let mut comm: ns::ncclComm_t = std::ptr::null_mut();
        let mut cfg = config(false);
        let uid = ns::ncclUniqueId {
            internal: id.map(|b| b as core::ffi::c_char),
        };
        // SAFETY: comm and cfg outlive the call; NCCL fills comm.
        let r = unsafe {
            nr::comm_init_rank_config(&mut comm, world as i32, uid, rank as i32, &mut cfg)
        };
        if let Err(e) = r {
            // A failed non-blocking init may still have made a
            // communicator: abort it so nothing of it lingers.
            if !comm.is_null() {
                // SAFETY: the handle NCCL returned, aborted once.
                let _ = unsafe { nr::comm_abort(comm) };
            }
            return Err(GpuError::Nccl(format!(
                "ncclCommInitRankConfig: {}",
                describe(e.0)
            )));
        }
        let mut me = NcclComm {
            comm,
            dev: dev.clone(),
            rank,
            world,
            timeout,
            aborted: false,
        };
        me.wait_ready("ncclCommInitRankConfig")?;
        Ok(me)
    }

    /// The GPU (context and stream) the communicator works on.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    fn async_error(&self) -> ns::ncclResult_t {
        let mut r = ns::ncclResult_t::ncclSuccess;
        // SAFETY: a live communicator; r is written.
        let call = unsafe { ns::ncclCommGetAsyncError(self.comm, &mut r) };
        if call != ns::ncclResult_t::ncclSuccess {
            return call;
        }
        r
    }

    fn abort(&mut self, why: String) -> GpuError {
        if !self.aborted {
            self.aborted = true;
            // SAFETY: a live communicator, aborted once.
            let _ = unsafe { nr::comm_abort(self.comm) };
        }
        GpuError::Nccl(why)
    }

    /// Until the communicator's pending work (set-up, an enqueue) is done.
    fn wait_ready(&mut self, what: &str) -> Result<(), GpuError> {
        let t0 = Instant::now();
        loop {
            match self.async_error() {
                ns::ncclResult_t::ncclSuccess => return Ok(()),
                ns::ncclResult_t::ncclInProgress => {}
                other => return Err(self.abort(format!("{what}: {}", describe(other)))),
            }
            if t0.elapsed() > self.timeout {
                return Err(self.abort(format!(
                    "{what} did not complete within {:?} (a peer missing or stuck); communicator aborted",
                    self.timeout
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Until the stream has run everything enqueued so far, watching for
    /// NCCL's asynchronous errors and the timeout.
    fn wait_stream(&mut self, what: &str) -> Result<(), GpuError> {
        self.wait_ready(what)?;
        let event = self
            .dev
            .stream
            .record_event(None)
            .map_err(|e| GpuError::Nccl(format!("{what}: CUDA event: {e:?}")))?;
        let t0 = Instant::now();
        let mut pause = Duration::from_micros(5);
        loop {
            // The checked query: a CUDA error (a faulting kernel, a lost
            // device) is reported as itself at once, not as a dead peer
            // after the timeout.
            match event.try_is_complete() {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    return Err(self.abort(format!(
                        "{what}: CUDA error on the stream: {e:?} (not a peer problem); communicator aborted"
                    )))
                }
            }
            match self.async_error() {
                ns::ncclResult_t::ncclSuccess | ns::ncclResult_t::ncclInProgress => {}
                other => return Err(self.abort(format!("{what}: {}", describe(other)))),
            }
            if t0.elapsed() > self.timeout {
                return Err(self.abort(format!(
                    "{what} did not finish within {:?} (a peer dead or hung); communicator aborted",
                    self.timeout
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_micros(500));
        }
        Ok(())
    }

    fn check(
        &mut self,
        what: &str,
        r: Result<nr::NcclStatus, nr::NcclError>,
    ) -> Result<(), GpuError> {
        match r {
            // A non-blocking communicator may still be enqueuing: it takes
            // no other call until that is done.
            Ok(nr::NcclStatus::InProgress) => self.wait_ready(what),
            Ok(_) => Ok(()),
            Err(e) => Err(self.abort(format!("{what}: {}", describe(e.0)))),
        }
    }

    fn stream_handle(&self) -> ns::cudaStream_t {
        self.dev.stream.cu_stream() as ns::cudaStream_t
    }

    /// In place on the device, waited for.
    pub fn all_reduce_device(&mut self, buf: &mut CudaSlice<f32>, op: Op) -> Result<(), GpuError> {
        self.all_reduce_device_async(buf, op)?;
        self.wait_stream("ncclAllReduce")
    }

    /// In place on the device, enqueued only (the next wait covers it).
    pub fn all_reduce_device_async(
        &mut self,
        buf: &mut CudaSlice<f32>,
        op: Op,
    ) -> Result<(), GpuError> {
        let n = buf.len();
        let stream = self.dev.stream.clone();
        let (p, _sync) = buf.device_ptr_mut(&stream);
        // SAFETY: n floats at p, on this communicator's stream.
        let r = unsafe {
            nr::all_reduce(
                p as *const c_void,
                p as *mut c_void,
                n,
                ns::ncclDataType_t::ncclFloat32,
                op.nccl(),
                self.comm,
                self.stream_handle(),
            )
        };
        drop(_sync);
        self.check("ncclAllReduce", r)
    }

    /// Out of place on the device (the sweep's out-of-place column).
    pub fn all_reduce_device_oop(
        &mut self,
        send: &CudaSlice<f32>,
        recv: &mut CudaSlice<f32>,
        op: Op,
    ) -> Result<(), GpuError> {
        let n = send.len().min(recv.len());
        let stream = self.dev.stream.clone();
        let (s, _a) = send.device_ptr(&stream);
        let (d, _b) = recv.device_ptr_mut(&stream);
        // SAFETY: n floats at s and d, on this communicator's stream.
        let r = unsafe {
            nr::all_reduce(
                s as *const c_void,
                d as *mut c_void,
                n,
                ns::ncclDataType_t::ncclFloat32,
                op.nccl(),
                self.comm,
                self.stream_handle(),
            )
        };
        drop((_a, _b));
        self.check("ncclAllReduce", r)
    }

    /// Wait for everything enqueued (timing loops enqueue several).
    pub fn synchronize(&mut self, what: &str) -> Result<(), GpuError> {
        self.wait_stream(what)
    }

    fn to_device<T: NcclElem>(&self, host: &[T], len: usize) -> Result<CudaSlice<T>, GpuError> {
        let mut d = self
            .dev
            .stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| GpuError::Nccl(format!("device memory: {e:?}")))?;
        if !host.is_empty() {
            let mut view = d.slice_mut(0..host.len());
            self.dev
                .stream
                .memcpy_htod(host, &mut view)
                .map_err(|e| GpuError::Nccl(format!("copy to device: {e:?}")))?;
        }
        Ok(d)
    }

    fn to_host<T: NcclElem>(&self, d: &CudaSlice<T>, host: &mut [T]) -> Result<(), GpuError> {
        if host.is_empty() {
            return Ok(());
        }
        let view = d.slice(0..host.len());
        self.dev
            .stream
            .memcpy_dtoh(&view, host)
            .map_err(|e| GpuError::Nccl(format!("copy to host: {e:?}")))?;
        self.dev
            .stream
            .synchronize()
            .map_err(|e| GpuError::Nccl(format!("synchronize: {e:?}")))
    }

    /// One collective on host data through the device: `input` copied in,
    /// `call(send, recv)` enqueued (out of place, `out_len` elements out),
    /// waited for with the watchdog; returns the device result.
    fn via_device<T: NcclElem>(
        &mut self,
        what: &str,
        input: &[T],
        out_len: usize,
        call: impl FnOnce(*const c_void, *mut c_void) -> Result<nr::NcclStatus, nr::NcclError>,
    ) -> Result<CudaSlice<T>, GpuError> {
        let send = self.to_device(input, input.len())?;
        let mut recv = self.to_device::<T>(&[], out_len)?;
        let stream = self.dev.stream.clone();
        let (s, _a) = send.device_ptr(&stream);
        let (d, _b) = recv.device_ptr_mut(&stream);
        let r = call(s as *const c_void, d as *mut c_void);
        drop((_a, _b));
        self.check(what, r)?;
        self.wait_stream(what)?;
        Ok(recv)
    }

    /// Host buffers through the device: copy in, collective, copy out.
    pub fn all_reduce_host<T: NcclElem>(&mut self, buf: &mut [T], op: Op) -> Result<(), GpuError> {
        if buf.is_empty() {
            return Ok(());
        }
        let (comm, stream, n) = (self.comm, self.stream_handle(), buf.len());
        // SAFETY: n elements at both pointers, on this communicator's stream.
        let d = self.via_device("ncclAllReduce", buf, n, |s, d| unsafe {
            nr::all_reduce(s, d, n, T::DT, op.nccl(), comm, stream)
        })?;
        self.to_host(&d, buf)
    }

    pub fn broadcast_host<T: NcclElem>(
        &mut self,
        buf: &mut [T],
        root: usize,
    ) -> Result<(), GpuError> {
        if buf.is_empty() {
            return Ok(());
        }
        let (comm, stream, n) = (self.comm, self.stream_handle(), buf.len());
        // SAFETY: as above.
        let d = self.via_device("ncclBroadcast", buf, n, |s, d| unsafe {
            nr::broadcast(s, d, n, T::DT, root as i32, comm, stream)
        })?;
        self.to_host(&d, buf)
    }

    /// `output` (world x input.len()) gets every rank's input in rank order.
    pub fn all_gather_host<T: NcclElem>(
        &mut self,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), GpuError> {
        if input.is_empty() {
            return Ok(());
        }
        let (comm, stream, n) = (self.comm, self.stream_handle(), input.len());
        // SAFETY: n elements at the input, world x n at the output.
        let d = self.via_device("ncclAllGather", input, output.len(), |s, d| unsafe {
            nr::all_gather(s, d, n, T::DT, comm, stream)
        })?;
        self.to_host(&d, output)
    }

    /// `input` (world x output.len()) reduced; this rank keeps its block.
    pub fn reduce_scatter_host<T: NcclElem>(
        &mut self,
        input: &[T],
        output: &mut [T],
        op: Op,
    ) -> Result<(), GpuError> {
        if output.is_empty() {
            return Ok(());
        }
        let (comm, stream, n) = (self.comm, self.stream_handle(), output.len());
        // SAFETY: world x n elements at the input, n at the output.
        let d = self.via_device("ncclReduceScatter", input, n, |s, d| unsafe {
            nr::reduce_scatter(s, d, n, T::DT, op.nccl(), comm, stream)
        })?;
        self.to_host(&d, output)
    }

    /// Every rank reaches this point (an all-reduce of one float).
    pub fn barrier(&mut self) -> Result<(), GpuError> {
        let mut one = [1f32];
        self.all_reduce_host(&mut one, Op::Sum)
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        if self.aborted {
            return;
        }
        // A clean end: finalize (non-blocking: wait for it), then destroy;
        // abort instead if the finalize does not complete in time.
        // SAFETY: a live communicator, released once.
        let fin = unsafe { nr::comm_finalize(self.comm) };
        if fin.is_err() || self.wait_ready("ncclCommFinalize").is_err() {
            if !self.aborted {
                // SAFETY: as above.
                let _ = unsafe { nr::comm_abort(self.comm) };
            }
            return;
        }
        // SAFETY: finalized, destroyed once.
        let _ = unsafe { nr::comm_destroy(self.comm) };
    }
}

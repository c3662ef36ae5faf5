//! The workloads a worker can run. Each returns its figures as a
//! `proto::result::WorkerResult` that the launcher puts in report.json.

pub mod allreduce;
pub mod channel;
pub mod command;
pub mod gemm;
pub mod train;

//! The workloads a worker can run. Each returns a JSON payload of its figures
//! that the launcher puts in report.json.

pub mod allreduce;
pub mod command;
pub mod gemm;
pub mod train;

//! What both sides of ringmaster read: the job spec and its compiler, the
//! rendezvous wire messages, the worker environment contract and the named
//! exit codes, what a worker reports at its end. No async runtime, no hardware: only data and pure functions.

pub mod checkpoint;
pub mod contract;
pub mod env;
pub mod events;
pub mod exit;
pub mod report;
pub mod result;
pub mod spec;
pub mod telemetry;
pub mod wire;

pub use spec::{compile, CompileError, JobSpec, SpecIssue};

//! The ringmaster launcher: command line, spec loading, planning, the
//! rendezvous server, worker processes, supervision and reporting.

pub mod agent;
pub mod aws;
pub mod bootstrap;
pub mod capacity;
pub mod cli;
pub mod cloud_requests;
pub mod commits;
pub mod error;
pub mod events;
pub mod gpu_env;
pub mod html;
pub mod kube;
pub mod load;
pub mod metrics;
pub mod node_rank;
pub mod plan;
pub mod preflight;
pub mod process;
pub mod progress;
pub mod provider;
pub mod providers;
pub mod relay;
pub mod rendezvous;
pub mod report;
pub mod sessions;
pub mod sim;
pub mod slurm;
pub mod ssh;
pub mod status;
pub mod supervisor;
pub mod watchers;

pub use cli::main;

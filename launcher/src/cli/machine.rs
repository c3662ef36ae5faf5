//! `doctor` and `gpus`: what this machine has.

use super::*;
use crate::error::LaunchError;
use proto::exit::LauncherExit;

/// `ringmaster doctor`: what this machine has for GPU jobs, and what a
/// worker loads under a run's environment.
pub(super) fn cmd_doctor(json: bool) -> Result<LauncherExit, LaunchError> {
    let mut r = gpu::doctor::run(std::path::Path::new("/sys/class/infiniband"));
    // Ask a worker what it can load under a run's environment:
    // found is not enough, the workers must load it.
    match worker_bin(None) {
        Ok(bin) => match crate::gpu_env::worker_check(&bin, &r.located) {
            Ok(checks) => {
                r.verdicts
                    .extend(gpu::doctor::worker_verdicts(&r.located, &checks));
                r.worker_libs = Some(checks);
            }
            Err(e) => r.verdicts.push(gpu::doctor::Verdict {
                level: gpu::doctor::Level::Warn,
                what: format!("could not ask a worker what it loads: {e}"),
                fix: None,
            }),
        },
        Err(e) => r.verdicts.push(gpu::doctor::Verdict {
            level: gpu::doctor::Level::Warn,
            what: format!("could not ask a worker what it loads: {e}"),
            fix: None,
        }),
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("doctor report serialises")
        );
    } else {
        println!("{}", gpu::doctor::human(&r));
    }
    Ok(LauncherExit::Success)
}

pub(super) fn cmd_gpus(csv: bool, json: bool) -> Result<LauncherExit, LaunchError> {
    let gpus = gpu::telemetry::sample().map_err(|e| LaunchError::Unsupported(format!("{e}")))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&gpus).expect("samples serialise")
        );
    } else if csv {
        let now = std::time::SystemTime::now();
        println!("{}", gpu::telemetry::CSV_HEADER);
        for g in &gpus {
            println!("{}", gpu::telemetry::csv_row(now, g));
        }
    } else {
        for g in &gpus {
            println!("{}", g.summary());
        }
    }
    Ok(LauncherExit::Success)
}

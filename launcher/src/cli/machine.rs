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
    // For scripts: 0 when GPU jobs can run here (warnings allowed), 6
    // (unsupported) when any verdict is an error.
    Ok(
        if r.verdicts
            .iter()
            .any(|v| v.level == gpu::doctor::Level::Error)
        {
            LauncherExit::Unsupported
        } else {
            LauncherExit::Success
        },
    )
}

pub(super) fn cmd_gpus(
    csv: bool,
    json: bool,
    every: Option<f64>,
) -> Result<LauncherExit, LaunchError> {
    if let Some(s) = every.filter(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(LaunchError::Config(vec![proto::SpecIssue::new(
            "--loop",
            format!("must be a number of seconds > 0, got {s}"),
        )]));
    }
    let mut first = true;
    loop {
        let gpus =
            gpu::telemetry::sample().map_err(|e| LaunchError::Unsupported(format!("{e}")))?;
        if json {
            println!(
                "{}",
                serde_json::to_string(&gpus).expect("samples serialise")
            );
        } else if csv {
            let now = std::time::SystemTime::now();
            if first {
                println!("{}", gpu::telemetry::CSV_HEADER);
            }
            for g in &gpus {
                println!("{}", gpu::telemetry::csv_row(now, g));
            }
        } else {
            for g in &gpus {
                println!("{}", g.summary());
            }
        }
        first = false;
        match every {
            Some(s) => std::thread::sleep(std::time::Duration::from_secs_f64(s)),
            None => return Ok(LauncherExit::Success),
        }
    }
}

/// `ringmaster status RUN_DIR`: the run's status.json while it runs; once
/// it ended, its outcome from report.json (exit 0 either way; 7 when the
/// folder is not a run's).
pub(super) fn cmd_status(
    dir: &std::path::Path,
    json: bool,
    watch: Option<f64>,
) -> Result<LauncherExit, LaunchError> {
    if let Some(s) = watch.filter(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(LaunchError::Config(vec![proto::SpecIssue::new(
            "--watch",
            format!("must be a number of seconds > 0, got {s}"),
        )]));
    }
    if !dir.join("events.jsonl").is_file() {
        return Err(LaunchError::Io(format!(
            "{} is not a run directory (no events.jsonl)",
            dir.display()
        )));
    }
    loop {
        let ended = dir.join("report.json");
        let status = crate::status::read(dir);
        if json {
            match &status {
                Ok(s) => println!("{}", serde_json::to_string(s).expect("status serialises")),
                Err(e) => println!("{}", serde_json::json!({"error": e})),
            }
        } else {
            match &status {
                Ok(s) => print!("{}", crate::status::human(s)),
                Err(_) => println!(
                    "{}: no status yet (a run writes status.json once a second)",
                    dir.display()
                ),
            }
        }
        if ended.is_file() {
            if !json {
                let r: serde_json::Value = std::fs::read(&ended)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                println!(
                    "ended: {} (exit {}){}",
                    r["status"].as_str().unwrap_or("?"),
                    r["exit_code"],
                    r["message"]
                        .as_str()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                );
            }
            return Ok(LauncherExit::Success);
        }
        match watch {
            Some(s) => std::thread::sleep(std::time::Duration::from_secs_f64(s)),
            None => return Ok(LauncherExit::Success),
        }
    }
}

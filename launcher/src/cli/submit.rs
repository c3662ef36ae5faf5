//! `submit --scheduler slurm|kubernetes`: the batch script or the
//! manifests, submitted or applied.

use super::*;
use crate::error::LaunchError;
use crate::load;
use proto::exit::LauncherExit;

/// `submit --scheduler kubernetes`: the manifests into --out, applied with
/// --apply.
pub(super) fn cmd_submit_kube(a: &SubmitArgs) -> Result<LauncherExit, LaunchError> {
    let mut c = load::load(Some(&a.job), &a.spec, &[])?;
    crate::kube::into_kubernetes(&mut c.spec, a.image.as_deref())?;
    let c = proto::spec::compile(serde_json::to_value(&c.spec).expect("spec serialises"))
        .map_err(|e| LaunchError::Config(e.issues().to_vec()))?;
    let out = a.out.as_ref().ok_or_else(|| {
        LaunchError::Unsupported(
            "submit --scheduler kubernetes needs --out DIR for the manifests".into(),
        )
    })?;
    let gpus = asks_for_gpus(&c.spec);
    if a.pod_monitor && crate::kube::metrics_port(&c.spec).is_none() {
        return Err(LaunchError::Config(vec![proto::SpecIssue::new(
            "observability.metrics_addr",
            "--pod-monitor needs the job's metrics: set observability.metrics_addr (or --metrics-addr), e.g. 0.0.0.0:9400",
        )]));
    }
    std::fs::create_dir_all(out).map_err(LaunchError::system(format!(
        "cannot create {}",
        out.display()
    )))?;
    // The token the pods present to pod 0's rendezvous, in the job's Secret.
    let token = crate::rendezvous::random_token();
    for (file, m) in crate::kube::manifests(&c.spec, gpus, &token, a.pod_monitor) {
        let p = out.join(file);
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&m).expect("manifest serialises"),
        )
        .map_err(LaunchError::system(format!("cannot write {}", p.display())))?;
        println!("{}", p.display());
    }
    if a.apply {
        let r = std::process::Command::new("kubectl")
            .args(["apply", "-f"])
            .arg(out)
            .status()
            .map_err(|e| LaunchError::Unsupported(format!("--apply: cannot run kubectl: {e}")))?;
        if !r.success() {
            return Err(LaunchError::Unsupported(format!(
                "kubectl apply -f {} failed ({r})",
                out.display()
            )));
        }
    }
    Ok(LauncherExit::Success)
}

pub(super) fn cmd_submit(a: &SubmitArgs) -> Result<LauncherExit, LaunchError> {
    if a.scheduler == Scheduler::Kubernetes {
        return cmd_submit_kube(a);
    }
    let mut c = load::load(Some(&a.job), &a.spec, &[])?;
    let spec = &mut c.spec;
    crate::slurm::submit::into_slurm(
        spec,
        a.partition.as_deref(),
        a.account.as_deref(),
        a.time.as_deref(),
    )?;
    // Check the result as `run` will inside the allocation.
    let c = proto::spec::compile(serde_json::to_value(&c.spec).expect("spec serialises"))
        .map_err(|e| LaunchError::Config(e.issues().to_vec()))?;
    let gpus = asks_for_gpus(&c.spec);
    // The script, the job file, Slurm's output and the run folders go to
    // the job's log_dir (--log-dir).
    let log_dir = std::path::PathBuf::from(&c.spec.log_dir);
    std::fs::create_dir_all(&log_dir).map_err(LaunchError::system(format!(
        "cannot create {}",
        log_dir.display()
    )))?;
    let log_dir = std::fs::canonicalize(&log_dir)
        .map_err(LaunchError::system(format!("{}", log_dir.display())))?;
    let stem: String = c
        .spec
        .name
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    let job_path = log_dir.join(format!("{stem}.slurm-job.json"));
    let script_path = log_dir.join(format!("{stem}.sbatch"));
    let me = std::env::current_exe().map_err(LaunchError::system("cannot find my own path"))?;
    let script = crate::slurm::submit::script(
        &c.spec,
        gpus,
        &crate::slurm::submit::ScriptArgs {
            ringmaster: &me,
            job: &job_path,
            log_dir: &log_dir,
        },
    );
    if a.dry_run {
        print!("{script}");
        return Ok(LauncherExit::Success);
    }
    let write = |p: &std::path::Path, s: &str| {
        std::fs::write(p, s).map_err(LaunchError::system(format!("cannot write {}", p.display())))
    };
    write(
        &job_path,
        &serde_json::to_string_pretty(&c.spec).expect("spec serialises"),
    )?;
    write(&script_path, &script)?;
    let out = std::process::Command::new("sbatch")
        .arg("--parsable")
        .arg(&script_path)
        .output()
        .map_err(|e| {
            LaunchError::Unsupported(format!("cannot run sbatch (is Slurm installed?): {e}"))
        })?;
    if !out.status.success() {
        return Err(LaunchError::Unsupported(format!(
            "sbatch refused {}: {}",
            script_path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let job_id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    println!("{job_id}");
    eprintln!(
        "[ringmaster] submitted Slurm job {job_id} ({}); output in {}",
        script_path.display(),
        log_dir.join(format!("slurm-{job_id}.out")).display()
    );
    if !a.wait {
        return Ok(LauncherExit::Success);
    }
    crate::slurm::submit::wait(
        &job_id,
        &log_dir,
        std::time::Duration::from_secs(a.wait_timeout),
    )
}

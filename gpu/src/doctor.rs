//! `ringmaster doctor`: what GPU software this machine has, where, at which
//! versions; the GPUs and their links; and verdicts with the fix to apply.

use crate::probe::{probe, Probe};
use crate::telemetry::{self, GpuSample};
use crate::topology::{self, IbPort};
use crate::{cuda_version_string, BUILD_CUDA_VERSION, MIN_DRIVER_FOR_BUILD};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Warn,
    Error,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub level: Level,
    pub what: String,
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub build_cuda: String,
    pub probe: Probe,
    pub gpus: Vec<GpuSample>,
    pub infiniband: Vec<IbPort>,
    /// The path between each pair of GPUs (NVLink or PCIe), and what it means.
    pub gpu_pairs: Vec<topology::GpuPair>,
    pub topology_notes: Vec<String>,
    pub suggested_nccl_env: Vec<(String, String)>,
    pub verdicts: Vec<Verdict>,
    /// Whether GPU jobs can run here.
    pub gpu_ready: bool,
    /// The library files found (where workers are pointed).
    pub located: crate::libs::Located,
    /// How each GPU reaches this machine (bare metal, passthrough, vGPU)
    /// and its MIG instances.
    pub attach: Vec<crate::virt::GpuAttach>,
    /// What a worker loaded under the environment a run gives it
    /// (`ringmaster-worker --check-libs`), when the launcher could ask one.
    pub worker_libs: Option<Vec<crate::libs::LibCheck>>,
}

fn v(level: Level, what: impl Into<String>, fix: Option<&str>) -> Verdict {
    Verdict {
        level,
        what: what.into(),
        fix: fix.map(str::to_string),
    }
}

/// Verdicts from what was found (pure, so it is tested by tables).
pub fn verdicts(p: &Probe, gpus: &[GpuSample]) -> Vec<Verdict> {
    let mut out = Vec::new();
    let build = cuda_version_string(BUILD_CUDA_VERSION);
    if !p.driver.present {
        out.push(v(Level::Error, "no NVIDIA driver: libcuda.so cannot be loaded, so no GPU can be used; CPU jobs run as usual",
            Some(&format!("on a GPU machine, install the NVIDIA driver branch {MIN_DRIVER_FOR_BUILD} or newer"))));
        out.extend(library_verdicts(p));
        return out;
    }
    match p.driver_cuda_version {
        Some(d) if d < BUILD_CUDA_VERSION => out.push(v(
            Level::Error,
            format!("the driver supports CUDA {} but this build targets CUDA {build}", cuda_version_string(d)),
            Some(&format!("upgrade the NVIDIA driver to branch {MIN_DRIVER_FOR_BUILD} or newer (or use a build for CUDA {})", cuda_version_string(d))),
        )),
        Some(d) => out.push(v(Level::Ok, format!("driver supports CUDA {} (build targets {build})", cuda_version_string(d)), None)),
        None => out.push(v(Level::Warn, "could not read the driver's CUDA version", None)),
    }
    match p.device_count {
        Some(n) if n > 0 => out.push(v(Level::Ok, format!("{n} GPU(s) visible to CUDA"), None)),
        _ => out.push(v(
            Level::Error,
            "the driver loads but reports no GPU",
            Some("check `nvidia-smi` and CUDA_VISIBLE_DEVICES"),
        )),
    }
    out.extend(library_verdicts(p));
    if !p.nvml.present {
        out.push(v(Level::Warn, "NVML not available: no GPU telemetry", None));
    }
    if gpus.len() > 1 && gpus.iter().all(|g| g.nvlink_active == 0) {
        out.push(v(
            Level::Warn,
            "several GPUs but no active NVLink: collectives go over PCIe",
            None,
        ));
    }
    for p in &p.problems {
        out.push(v(Level::Warn, p.clone(), None));
    }
    out
}

/// cuBLAS and NCCL as this process found them (with or without a driver:
/// the libraries are worth knowing about before the GPU arrives).
fn library_verdicts(p: &Probe) -> Vec<Verdict> {
    let mut out = Vec::new();
    if !p.cublas.present {
        out.push(v(
            Level::Error,
            "cuBLAS not found: GEMM and train cannot run on the GPU",
            Some(crate::libs::Lib::Cublas.install_hint()),
        ));
    } else {
        out.push(v(
            Level::Ok,
            format!(
                "cuBLAS {}",
                p.cublas.version.as_deref().unwrap_or("(version unknown)")
            ),
            None,
        ));
    }
    if !p.nccl.present {
        out.push(v(
            Level::Warn,
            "NCCL not found: multi-GPU jobs fall back to the TCP ring",
            Some("pip install nvidia-nccl-cu13, or set RINGMASTER_NCCL_LIB to libnccl.so.2"),
        ));
    } else {
        out.push(v(
            Level::Ok,
            format!(
                "NCCL {} at {}",
                p.nccl.version.as_deref().unwrap_or("?"),
                p.nccl.path.as_deref().unwrap_or("?")
            ),
            None,
        ));
    }
    out
}

/// What a worker could load under a run's environment, against what was
/// found: a library found but not loadable by workers is an error (a run
/// would pick it and every worker fail at its first call).
pub fn worker_verdicts(
    found: &crate::libs::Located,
    checks: &[crate::libs::LibCheck],
) -> Vec<Verdict> {
    use crate::libs::Lib;
    let mut out = Vec::new();
    for lib in Lib::ALL {
        let name = format!("{lib:?}").to_lowercase();
        let check = checks.iter().find(|c| c.lib == name);
        match (found.get(lib), check) {
            (_, Some(c)) if c.loaded => out.push(v(
                Level::Ok,
                format!(
                    "workers load {} {} from {}{}",
                    lib.label(),
                    c.version.as_deref().unwrap_or("(version unknown)"),
                    c.path.as_deref().unwrap_or("?"),
                    c.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
                ),
                None,
            )),
            (Some(f), _) => out.push(v(
                Level::Error,
                format!("{} was found at {} but a worker cannot load it", lib.label(), f.display()),
                Some("report this as a bug, with `ringmaster doctor --json`; meanwhile put its folder on LD_LIBRARY_PATH"),
            )),
            (None, _) => {}
        }
    }
    out
}

pub fn run(ib_root: &Path) -> DoctorReport {
    let probe = probe();
    let gpus = if probe.nvml.present {
        telemetry::sample().unwrap_or_default()
    } else {
        Vec::new()
    };
    let infiniband = topology::infiniband_ports(ib_root);
    let gpu_pairs = if gpus.len() > 1 {
        topology::gpu_pairs().unwrap_or_default()
    } else {
        Vec::new()
    };
    let topology_notes = topology::pair_notes(&gpu_pairs);
    let suggested_nccl_env = topology::suggest_nccl_env(&infiniband);
    let attach = if probe.nvml.present {
        crate::virt::read().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut verdicts = verdicts(&probe, &gpus);
    verdicts.extend(
        crate::virt::notes(&attach)
            .into_iter()
            .map(|(warn, what)| Verdict {
                level: if warn { Level::Warn } else { Level::Ok },
                what,
                fix: None,
            }),
    );
    let gpu_ready = probe.require_cublas().is_ok();
    DoctorReport {
        build_cuda: cuda_version_string(BUILD_CUDA_VERSION),
        probe,
        gpus,
        infiniband,
        gpu_pairs,
        topology_notes,
        suggested_nccl_env,
        verdicts,
        gpu_ready,
        located: crate::libs::located().clone(),
        attach,
        worker_libs: None,
    }
}

fn lib_line(l: &crate::probe::LibReport) -> String {
    if l.present || l.path.is_some() {
        format!(
            "{:<24} {:<12} {}",
            l.name,
            l.version.as_deref().unwrap_or("-"),
            l.path.as_deref().unwrap_or("(loaded; path unknown)")
        )
    } else {
        format!("{:<24} not found", l.name)
    }
}

pub fn human(r: &DoctorReport) -> String {
    let p = &r.probe;
    let mut out = vec![
        format!(
            "ringmaster doctor (this build targets CUDA {})",
            r.build_cuda
        ),
        String::new(),
        "libraries:".into(),
    ];
    for l in [&p.driver, &p.cublas, &p.cublaslt, &p.nccl, &p.nvml] {
        out.push(format!("  {}", lib_line(l)));
    }
    if let Some(d) = &p.driver_version {
        out.push(format!("  driver version           {d}"));
    }
    out.push(String::new());
    if r.gpus.is_empty() {
        out.push("GPUs: none found".into());
    } else {
        out.push("GPUs:".into());
        for g in &r.gpus {
            out.push(format!("  {}", g.summary()));
        }
    }
    if !r.gpu_pairs.is_empty() {
        out.push("topology (nvidia-smi topo -m):".into());
        for row in topology::matrix(r.gpus.len() as u32, &r.gpu_pairs) {
            out.push(format!("  {row}"));
        }
        for n in &r.topology_notes {
            out.push(format!("  {n}"));
        }
    }
    if r.infiniband.is_empty() {
        out.push("InfiniBand: no ports".into());
    } else {
        out.push("InfiniBand:".into());
        for port in &r.infiniband {
            out.push(format!(
                "  {}:{} {} {} {}",
                port.device, port.port, port.state, port.rate, port.link_layer
            ));
        }
    }
    let env: Vec<String> = r
        .suggested_nccl_env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push(format!("suggested NCCL settings: {}", env.join(" ")));
    if let Some(checks) = &r.worker_libs {
        out.push("a worker, under a run's environment, loads:".into());
        for c in checks {
            out.push(format!(
                "  {:<9} {}",
                c.lib,
                if c.loaded {
                    format!(
                        "{} {}",
                        c.version.as_deref().unwrap_or("-"),
                        c.path.as_deref().unwrap_or("(path unknown)")
                    )
                } else {
                    "not loadable".into()
                }
            ));
        }
    }
    out.push(String::new());
    out.push("verdicts:".into());
    for v in &r.verdicts {
        let tag = match v.level {
            Level::Ok => "ok   ",
            Level::Warn => "warn ",
            Level::Error => "ERROR",
        };
        out.push(format!("  {tag} {}", v.what));
        if let Some(f) = &v.fix {
            out.push(format!("        fix: {f}"));
        }
    }
    out.push(String::new());
    out.push(if r.gpu_ready {
        "GPU jobs: ready".into()
    } else {
        "GPU jobs: not possible here (CPU jobs are)".into()
    });
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::LibReport;

    fn lib(present: bool) -> LibReport {
        LibReport {
            name: "x".into(),
            present,
            path: None,
            version: None,
        }
    }

    fn probe_with(
        driver: bool,
        cuda: Option<i32>,
        devices: Option<i32>,
        cublas: bool,
        nccl: bool,
    ) -> Probe {
        Probe {
            driver: lib(driver),
            cublas: lib(cublas),
            cublaslt: lib(cublas),
            nccl: lib(nccl),
            nvml: lib(driver),
            driver_cuda_version: cuda,
            driver_version: None,
            device_count: devices,
            tf32_override: None,
            problems: vec![],
        }
    }

    /// Table: machine state -> (level, words the verdict must contain).
    #[test]
    fn verdict_table() {
        let cases: Vec<(Probe, Level, &str)> = vec![
            (
                probe_with(false, None, None, false, false),
                Level::Error,
                "no NVIDIA driver",
            ),
            (
                probe_with(true, Some(12040), Some(1), true, true),
                Level::Error,
                "supports CUDA 12.4 but this build targets CUDA 13.0",
            ),
            (
                probe_with(true, Some(13000), Some(0), true, true),
                Level::Error,
                "reports no GPU",
            ),
            (
                probe_with(true, Some(13000), Some(1), false, true),
                Level::Error,
                "cuBLAS not found",
            ),
            (
                probe_with(true, Some(13000), Some(1), true, false),
                Level::Warn,
                "NCCL not found",
            ),
        ];
        for (p, level, words) in cases {
            let vs = verdicts(&p, &[]);
            assert!(
                vs.iter()
                    .any(|v| v.level == level && v.what.contains(words)),
                "want {level:?} {words:?} in {vs:?}"
            );
            if level == Level::Error {
                assert!(
                    vs.iter()
                        .filter(|v| v.level == Level::Error)
                        .all(|v| v.fix.is_some() || v.what.contains("no GPU")),
                    "{vs:?}"
                );
            }
        }
        let good = verdicts(&probe_with(true, Some(13000), Some(1), true, true), &[]);
        assert!(good.iter().all(|v| v.level == Level::Ok), "{good:?}");
    }

    #[test]
    fn worker_verdict_table() {
        use crate::libs::{LibCheck, Located};
        let check = |lib: &str, loaded: bool| LibCheck {
            lib: lib.into(),
            loaded,
            path: loaded.then(|| format!("/x/lib{lib}.so")),
            version: loaded.then(|| "1".into()),
            detail: None,
        };
        let found = Located {
            nccl: Some("/w/libnccl.so.2".into()),
            cublas: None,
            cublaslt: None,
        };
        // (found, checks, level and words per verdict)
        let cases: Vec<(Located, Vec<LibCheck>, Vec<(Level, &str)>)> = vec![
            (
                found.clone(),
                vec![check("nccl", true)],
                vec![(Level::Ok, "workers load NCCL 1 from /x/libnccl.so")],
            ),
            (
                found.clone(),
                vec![check("nccl", false)],
                vec![(
                    Level::Error,
                    "found at /w/libnccl.so.2 but a worker cannot load it",
                )],
            ),
            (
                Located::default(),
                vec![check("nccl", false), check("cublas", false)],
                vec![],
            ),
            (
                Located::default(),
                vec![check("cublas", true)],
                vec![(Level::Ok, "workers load cuBLAS")],
            ),
        ];
        for (found, checks, want) in cases {
            let got = worker_verdicts(&found, &checks);
            assert_eq!(got.len(), want.len(), "{got:?}");
            for (g, (level, words)) in got.iter().zip(want) {
                assert!(
                    g.level == level && g.what.contains(words),
                    "{g:?} vs {words}"
                );
            }
        }
    }

    #[test]
    fn doctor_runs_here_and_says_what_is_missing() {
        let r = run(Path::new("/sys/class/infiniband"));
        let text = human(&r);
        assert!(text.contains("this build targets CUDA 13.0"), "{text}");
        if !r.probe.driver.present {
            assert!(!r.gpu_ready);
            assert!(text.contains("no NVIDIA driver"), "{text}");
            assert!(text.contains("GPU jobs: not possible here"), "{text}");
        }
    }
}

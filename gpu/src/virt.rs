//! How each GPU reaches this machine (bare metal, passthrough, vGPU) and
//! whether it is split by MIG, from NVML; what that means for a job
//! (verdicts for `doctor`), and which jobs such a machine cannot run
//! (`check_job`: refused before anything starts, exit 6). The mapping
//! from NVML's answers to verdicts is pure and tested by tables.

use serde::Serialize;

/// NVML's virtualization mode of a GPU, as seen from this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attach {
    BareMetal,
    /// A whole physical GPU handed to this VM.
    Passthrough,
    /// A share of a physical GPU (a vGPU profile) inside this VM.
    Vgpu,
    /// This machine is the vGPU hypervisor host.
    Host,
    Unknown,
}

/// One MIG instance (GPU instance + compute instance) as CUDA addresses it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigInstance {
    /// "MIG-..." (what CUDA_VISIBLE_DEVICES takes).
    pub uuid: String,
    pub memory_total_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuAttach {
    pub index: u32,
    pub uuid: Option<String>,
    pub pci_bus_id: Option<String>,
    pub attach: Attach,
    /// MIG mode is on (current, not pending).
    pub mig_enabled: bool,
    pub mig: Vec<MigInstance>,
}

/// Read every GPU's attachment and MIG set-up from NVML.
pub fn read() -> Result<Vec<GpuAttach>, crate::GpuError> {
    use nvml_wrapper::enum_wrappers::device::GpuVirtualizationMode as M;
    let nvml = crate::telemetry::nvml()?;
    let err = |e: nvml_wrapper::error::NvmlError| crate::GpuError::Nvml(e.to_string());
    let n = nvml.device_count().map_err(err)?;
    let mut out = Vec::new();
    for i in 0..n {
        let d = nvml.device_by_index(i).map_err(err)?;
        let attach = match d.virtualization_mode() {
            Ok(M::Bare) => Attach::BareMetal,
            Ok(M::PassThrough) => Attach::Passthrough,
            Ok(M::Vgpu) => Attach::Vgpu,
            Ok(M::HostVgpu) | Ok(M::HostVsga) => Attach::Host,
            Err(_) => Attach::Unknown,
        };
        let mig_enabled = d.mig_mode().map(|m| m.current == 1).unwrap_or(false);
        let mut mig = Vec::new();
        if mig_enabled {
            let max = d.mig_device_count().unwrap_or(0);
            for k in 0..max {
                // Slots without an instance answer NotFound.
                if let Ok(m) = d.mig_device_by_index(k) {
                    if let Ok(uuid) = m.uuid() {
                        let memory_total_mib = m.memory_info().map(|x| x.total >> 20).unwrap_or(0);
                        mig.push(MigInstance {
                            uuid,
                            memory_total_mib,
                        });
                    }
                }
            }
        }
        out.push(GpuAttach {
            index: i,
            uuid: d.uuid().ok(),
            pci_bus_id: d.pci_info().ok().map(|p| p.bus_id.to_ascii_lowercase()),
            attach,
            mig_enabled,
            mig,
        });
    }
    Ok(out)
}

/// What the set-up means, one note per finding: (is it a warning, text).
pub fn notes(gpus: &[GpuAttach]) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for g in gpus {
        let i = g.index;
        match g.attach {
            Attach::Passthrough => out.push((false, format!(
                "GPU {i} is passed through to this VM (a whole GPU): full speed; NVLink and P2P only where the hypervisor passes them"
            ))),
            Attach::Vgpu => out.push((true, format!(
                "GPU {i} is a vGPU (a share of a physical GPU): vGPU profiles usually have no P2P or NVLink, so NCCL goes through host memory, and memory is the profile's"
            ))),
            Attach::Host => out.push((true, format!(
                "GPU {i} belongs to a vGPU hypervisor host: CUDA work belongs in its VMs"
            ))),
            Attach::BareMetal | Attach::Unknown => {}
        }
        if g.mig_enabled {
            if g.mig.is_empty() {
                out.push((true, format!(
                    "GPU {i} has MIG on but no instances: no CUDA work can run on it until instances are created (nvidia-smi mig -cgi ... -C)"
                )));
            } else {
                let ids: Vec<&str> = g.mig.iter().map(|m| m.uuid.as_str()).collect();
                out.push((true, format!(
                    "GPU {i} is split by MIG into {} instance(s) ({}): each worker gets one instance by its MIG-... UUID in CUDA_VISIBLE_DEVICES (a CUDA process sees one instance); NCCL cannot communicate between MIG instances of one GPU",
                    g.mig.len(),
                    ids.join(", ")
                )));
            }
        }
    }
    out
}

/// The CUDA devices workers can be given one each, where MIG is on
/// anywhere: MIG instances by UUID (and whole GPUs by theirs), each with
/// the index of the physical GPU it is on. None: no MIG, ordinals do.
fn devices(gpus: &[GpuAttach]) -> Option<Vec<(String, u32)>> {
    if !gpus.iter().any(|g| g.mig_enabled) {
        return None;
    }
    Some(
        gpus.iter()
            .flat_map(|g| {
                if g.mig_enabled {
                    g.mig
                        .iter()
                        .map(|m| (m.uuid.clone(), g.index))
                        .collect::<Vec<_>>()
                } else {
                    g.uuid.iter().map(|u| (u.clone(), g.index)).collect()
                }
            })
            .collect(),
    )
}

/// The CUDA devices workers can be given one each: MIG instances by UUID
/// where MIG is on, else None (plain device ordinals do).
pub fn device_ids(gpus: &[GpuAttach]) -> Option<Vec<String>> {
    devices(gpus).map(|d| d.into_iter().map(|(id, _)| id).collect())
}

/// Whether a job with `workers` workers on this machine, reducing with
/// NCCL when `nccl`, can run on this set-up; Err: why not.
pub fn check_job(gpus: &[GpuAttach], workers: usize, nccl: bool) -> Result<(), String> {
    let Some(devs) = devices(gpus) else {
        return Ok(());
    };
    if devs.is_empty() {
        return Err("MIG is on and no MIG instance exists: no CUDA device to run on (create instances with nvidia-smi mig)".into());
    }
    if workers > devs.len() {
        let ids: Vec<&str> = devs.iter().map(|(id, _)| id.as_str()).collect();
        return Err(format!(
            "{workers} workers on this machine but only {} MIG instance(s)/GPU(s) to give them ({}); a MIG instance is not shared between workers",
            devs.len(),
            ids.join(", ")
        ));
    }
    if nccl && workers > 1 {
        // The devices workers get, in order: any two on one physical GPU?
        let used: Vec<u32> = devs.iter().take(workers).map(|(_, g)| *g).collect();
        if let Some(g) = used
            .iter()
            .find(|g| used.iter().filter(|x| x == g).count() > 1)
        {
            return Err(format!(
                "NCCL cannot communicate between MIG instances of one GPU, and {workers} workers would share GPU {g}'s instances; use collective.backend \"tcp\", one worker per physical GPU, or turn MIG off"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, attach: Attach, mig: Option<usize>) -> GpuAttach {
        GpuAttach {
            index,
            uuid: Some(format!("GPU-{index}")),
            pci_bus_id: None,
            attach,
            mig_enabled: mig.is_some(),
            mig: (0..mig.unwrap_or(0))
                .map(|k| MigInstance {
                    uuid: format!("MIG-{index}-{k}"),
                    memory_total_mib: 10_000,
                })
                .collect(),
        }
    }

    #[test]
    fn notes_table() {
        // (GPUs, words each note must contain, whether it warns)
        let cases: Vec<(Vec<GpuAttach>, Vec<(&str, bool)>)> = vec![
            (vec![gpu(0, Attach::BareMetal, None)], vec![]),
            (
                vec![gpu(0, Attach::Passthrough, None)],
                vec![("passed through", false)],
            ),
            (vec![gpu(0, Attach::Vgpu, None)], vec![("vGPU", true)]),
            (
                vec![gpu(0, Attach::BareMetal, Some(0))],
                vec![("no instances", true)],
            ),
            (
                vec![gpu(0, Attach::BareMetal, Some(2))],
                vec![("2 instance(s) (MIG-0-0, MIG-0-1)", true)],
            ),
            (
                vec![gpu(0, Attach::Vgpu, Some(1))],
                vec![("vGPU", true), ("1 instance(s)", true)],
            ),
        ];
        for (gpus, want) in cases {
            let got = notes(&gpus);
            assert_eq!(got.len(), want.len(), "{got:?}");
            for ((warn, text), (words, w)) in got.iter().zip(&want) {
                assert!(text.contains(words) && warn == w, "{text} vs {words}");
            }
        }
    }

    #[test]
    fn jobs_table() {
        let plain = vec![
            gpu(0, Attach::BareMetal, None),
            gpu(1, Attach::BareMetal, None),
        ];
        let mig2 = vec![gpu(0, Attach::BareMetal, Some(2))];
        let mig_and_plain = vec![
            gpu(0, Attach::BareMetal, Some(1)),
            gpu(1, Attach::BareMetal, None),
        ];
        let mig_none = vec![gpu(0, Attach::BareMetal, Some(0))];
        // (GPUs, workers, nccl, error words or None)
        let cases: Vec<(&Vec<GpuAttach>, usize, bool, Option<&str>)> = vec![
            (&plain, 4, true, None),
            (&mig2, 1, true, None),
            (&mig2, 2, false, None),
            (
                &mig2,
                2,
                true,
                Some("NCCL cannot communicate between MIG instances"),
            ),
            (&mig2, 3, false, Some("only 2 MIG instance(s)")),
            (&mig_and_plain, 2, true, None),
            (&mig_none, 1, false, Some("no MIG instance exists")),
        ];
        for (gpus, workers, nccl, want) in cases {
            match (check_job(gpus, workers, nccl), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{e} vs {w}"),
                (got, want) => panic!("{workers} {nccl}: {got:?} vs {want:?}"),
            }
        }
        assert_eq!(device_ids(&plain), None);
        assert_eq!(
            device_ids(&mig_and_plain),
            Some(vec!["MIG-0-0".to_string(), "GPU-1".to_string()])
        );
    }
}

//! InfiniBand ports from sysfs (/sys/class/infiniband/<hca>/ports/<n>/),
//! the path between each pair of GPUs from NVML (NVLink or the PCIe
//! hierarchy, in `nvidia-smi topo -m`'s terms), and the NCCL settings and
//! warnings they suggest.

use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IbPort {
    pub device: String,
    pub port: u32,
    /// e.g. "ACTIVE" (from "4: ACTIVE").
    pub state: String,
    /// e.g. "400 Gb/sec (4X NDR)".
    pub rate: String,
    /// "InfiniBand" or "Ethernet" (RoCE).
    pub link_layer: String,
}

impl IbPort {
    pub fn active(&self) -> bool {
        self.state == "ACTIVE"
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Every port under `root` (normally /sys/class/infiniband), sorted.
pub fn infiniband_ports(root: &Path) -> Vec<IbPort> {
    let mut out = Vec::new();
    let Ok(devs) = std::fs::read_dir(root) else {
        return out;
    };
    for dev in devs.flatten() {
        let device = dev.file_name().to_string_lossy().into_owned();
        let Ok(ports) = std::fs::read_dir(dev.path().join("ports")) else {
            continue;
        };
        for port in ports.flatten() {
            let Ok(n) = port.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let p = port.path();
            let state = read(&p.join("state"));
            let state = state
                .split_once(':')
                .map(|(_, s)| s.trim().to_string())
                .unwrap_or(state);
            out.push(IbPort {
                device: device.clone(),
                port: n,
                state,
                rate: read(&p.join("rate")),
                link_layer: read(&p.join("link_layer")),
            });
        }
    }
    out.sort_by(|a, b| (&a.device, a.port).cmp(&(&b.device, b.port)));
    out
}

/// NCCL environment to suggest for these ports.
pub fn suggest_nccl_env(ports: &[IbPort]) -> Vec<(String, String)> {
    let active: Vec<&IbPort> = ports
        .iter()
        .filter(|p| p.active() && p.link_layer == "InfiniBand")
        .collect();
    if active.is_empty() {
        // No usable InfiniBand: keep NCCL from probing for it.
        return vec![("NCCL_IB_DISABLE".into(), "1".into())];
    }
    let hcas: Vec<String> = active
        .iter()
        .map(|p| format!("{}:{}", p.device, p.port))
        .collect();
    vec![
        ("NCCL_IB_HCA".into(), hcas.join(",")),
        ("NCCL_IB_DISABLE".into(), "0".into()),
    ]
}

/// How two GPUs reach each other, as `nvidia-smi topo -m` names it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GpuLink {
    /// `links` NVLinks between them (NV#).
    NvLink { links: u32 },
    /// One PCIe switch (PIX).
    Pix,
    /// Several PCIe switches, no host bridge (PXB).
    Pxb,
    /// Through a PCIe host bridge (PHB).
    Phb,
    /// Host bridges within one NUMA node (NODE).
    Node,
    /// Across NUMA nodes / CPU sockets (SYS).
    Sys,
}

impl GpuLink {
    pub fn label(self) -> String {
        match self {
            GpuLink::NvLink { links } => format!("NV{links}"),
            GpuLink::Pix => "PIX".into(),
            GpuLink::Pxb => "PXB".into(),
            GpuLink::Phb => "PHB".into(),
            GpuLink::Node => "NODE".into(),
            GpuLink::Sys => "SYS".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GpuPair {
    pub a: u32,
    pub b: u32,
    pub path: GpuLink,
}

/// Where one GPU's active NVLinks end: other GPUs (their PCI bus ids) or
/// NVSwitches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkEnds {
    pub to_gpu: Vec<String>,
    pub to_switch: u32,
}

/// NVLinks between GPU a and GPU b (bus id `b_bus`): links straight to b,
/// else, when both reach NVSwitches, the fewer of their switch links (every
/// pair of an HGX board talks over the switches at that width) unless
/// NVML's P2P status says NVLink P2P is not possible between them.
pub fn nvlink_between(
    a: &LinkEnds,
    b: &LinkEnds,
    b_bus: &str,
    p2p_nvlink: Option<bool>,
) -> Option<u32> {
    let direct = a.to_gpu.iter().filter(|r| *r == b_bus).count() as u32;
    if direct > 0 {
        return Some(direct);
    }
    (a.to_switch > 0 && b.to_switch > 0 && p2p_nvlink != Some(false))
        .then(|| a.to_switch.min(b.to_switch))
}

/// The path between every pair of this machine's GPUs, from NVML: NVLinks
/// counted by the remote PCI bus id of each active link, otherwise the
/// common PCIe ancestor.
pub fn gpu_pairs() -> Result<Vec<GpuPair>, crate::GpuError> {
    use nvml_wrapper::enum_wrappers::device::TopologyLevel as T;
    let nvml = crate::telemetry::nvml()?;
    let n = nvml
        .device_count()
        .map_err(|e| crate::GpuError::Nvml(e.to_string()))?;
    let dev = |i: u32| {
        nvml.device_by_index(i)
            .map_err(|e| crate::GpuError::Nvml(e.to_string()))
    };
    let mut bus = Vec::new();
    let mut ends: Vec<LinkEnds> = Vec::new();
    for i in 0..n {
        let d = dev(i)?;
        bus.push(
            d.pci_info()
                .map(|p| p.bus_id.to_ascii_lowercase())
                .unwrap_or_default(),
        );
        let mut e = LinkEnds::default();
        for l in (0..18u32).filter(|l| d.link_wrapper_for(*l).is_active().unwrap_or(false)) {
            let link = d.link_wrapper_for(l);
            // On NVSwitch machines (HGX) every link ends at a switch, not
            // at the other GPU.
            if matches!(
                link.remote_device_type(l),
                Ok(nvml_wrapper::enum_wrappers::nv_link::IntDeviceType::Switch)
            ) {
                e.to_switch += 1;
            } else if let Ok(p) = link.remote_pci_info() {
                e.to_gpu.push(p.bus_id.to_ascii_lowercase());
            }
        }
        ends.push(e);
    }
    let mut out = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            let p2p = dev(a)?
                .p2p_status(
                    &dev(b)?,
                    nvml_wrapper::enum_wrappers::device::P2pCapabilitiesIndex::NvLink,
                )
                .ok()
                .map(|s| s == nvml_wrapper::enum_wrappers::device::P2pStatus::Ok);
            let links = nvlink_between(&ends[a as usize], &ends[b as usize], &bus[b as usize], p2p)
                .unwrap_or(0);
            let path = if links > 0 {
                GpuLink::NvLink { links }
            } else {
                match dev(a)?.topology_common_ancestor(dev(b)?) {
                    Ok(T::Internal) | Ok(T::Single) => GpuLink::Pix,
                    Ok(T::Multiple) => GpuLink::Pxb,
                    Ok(T::HostBridge) => GpuLink::Phb,
                    Ok(T::Node) => GpuLink::Node,
                    _ => GpuLink::Sys,
                }
            };
            out.push(GpuPair { a, b, path });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod nvlink_tests {
    use super::*;

    #[test]
    fn nvlink_between_table() {
        let gpu = |ids: &[&str]| LinkEnds {
            to_gpu: ids.iter().map(|s| s.to_string()).collect(),
            to_switch: 0,
        };
        let sw = |n| LinkEnds {
            to_gpu: vec![],
            to_switch: n,
        };
        // (a, b, p2p, links)
        let cases: Vec<(LinkEnds, LinkEnds, Option<bool>, Option<u32>)> = vec![
            // Direct links (DGX-1 style): counted.
            (gpu(&["b", "b", "c"]), gpu(&["a"]), None, Some(2)),
            (gpu(&["c"]), gpu(&[]), None, None),
            // HGX H100: 18 links each to the NVSwitches.
            (sw(18), sw(18), Some(true), Some(18)),
            (sw(18), sw(18), None, Some(18)),
            (sw(18), sw(12), None, Some(12)),
            // Switch links but no NVLink P2P between them (another
            // partition, a vGPU profile without P2P).
            (sw(18), sw(18), Some(false), None),
            (sw(18), gpu(&[]), None, None),
            (LinkEnds::default(), LinkEnds::default(), None, None),
        ];
        for (a, b, p2p, want) in cases {
            assert_eq!(
                nvlink_between(&a, &b, "b", p2p),
                want,
                "{a:?} {b:?} {p2p:?}"
            );
        }
    }
}

/// What the GPU pairs mean for NCCL: a note per finding (pure, tested by
/// table). NVSwitch systems show every pair as NV#.
pub fn pair_notes(pairs: &[GpuPair]) -> Vec<String> {
    if pairs.is_empty() {
        return Vec::new();
    }
    let nv = pairs
        .iter()
        .filter(|p| matches!(p.path, GpuLink::NvLink { .. }))
        .count();
    let mut notes = Vec::new();
    if nv == pairs.len() {
        let min = pairs
            .iter()
            .filter_map(|p| match p.path {
                GpuLink::NvLink { links } => Some(links),
                _ => None,
            })
            .min()
            .unwrap_or(0);
        notes.push(format!(
            "every GPU pair has NVLink (at least {min} links): NCCL uses P2P over NVLink by default"
        ));
    } else if nv > 0 {
        notes.push(format!(
            "{nv} of {} GPU pairs have NVLink; rings through the others go over PCIe",
            pairs.len()
        ));
    }
    let sys: Vec<String> = pairs
        .iter()
        .filter(|p| p.path == GpuLink::Sys)
        .map(|p| format!("{}-{}", p.a, p.b))
        .collect();
    if !sys.is_empty() {
        notes.push(format!(
            "GPU pairs {} cross CPU sockets (SYS): NCCL stages their traffic through host memory; keep a job's ranks on one NUMA node, or try NCCL_P2P_LEVEL=SYS",
            sys.join(", ")
        ));
    }
    notes
}

/// The pairs as `nvidia-smi topo -m`'s matrix (GPU rows and columns).
pub fn matrix(n: u32, pairs: &[GpuPair]) -> Vec<String> {
    let mut rows = vec![std::iter::once("     ".to_string())
        .chain((0..n).map(|j| format!("{:>6}", format!("GPU{j}"))))
        .collect::<String>()];
    for i in 0..n {
        let mut row = format!("GPU{i:<2}");
        for j in 0..n {
            let cell = if i == j {
                "X".to_string()
            } else {
                let (a, b) = (i.min(j), i.max(j));
                pairs
                    .iter()
                    .find(|p| p.a == a && p.b == b)
                    .map(|p| p.path.label())
                    .unwrap_or_else(|| "?".into())
            };
            row.push_str(&format!("{cell:>6}"));
        }
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_pairs_become_notes_and_a_matrix() {
        let p = |a, b, path| GpuPair { a, b, path };
        let nv = |links| GpuLink::NvLink { links };
        // (pairs, expected notes' starts)
        let table: Vec<(Vec<GpuPair>, Vec<&str>)> = vec![
            (vec![], vec![]),
            (
                vec![p(0, 1, nv(18)), p(0, 2, nv(18)), p(1, 2, nv(12))],
                vec!["every GPU pair has NVLink (at least 12 links)"],
            ),
            (
                vec![
                    p(0, 1, nv(4)),
                    p(0, 2, GpuLink::Sys),
                    p(1, 2, GpuLink::Node),
                ],
                vec![
                    "1 of 3 GPU pairs have NVLink",
                    "GPU pairs 0-2 cross CPU sockets",
                ],
            ),
            (vec![p(0, 1, GpuLink::Pix)], vec![]),
        ];
        for (pairs, want) in table {
            let got = pair_notes(&pairs);
            assert_eq!(got.len(), want.len(), "{got:?}");
            for (g, w) in got.iter().zip(&want) {
                assert!(g.starts_with(w), "{g} vs {w}");
            }
        }
        let m = matrix(
            3,
            &[
                p(0, 1, nv(18)),
                p(0, 2, GpuLink::Sys),
                p(1, 2, GpuLink::Phb),
            ],
        );
        assert_eq!(m[1], "GPU0      X  NV18   SYS");
        assert_eq!(m[3], "GPU2    SYS   PHB     X");
    }

    fn port(root: &Path, dev: &str, n: u32, state: &str, rate: &str, layer: &str) {
        let p = root.join(dev).join("ports").join(n.to_string());
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("state"), format!("{state}\n")).unwrap();
        std::fs::write(p.join("rate"), format!("{rate}\n")).unwrap();
        std::fs::write(p.join("link_layer"), format!("{layer}\n")).unwrap();
    }

    #[test]
    fn reads_sysfs_and_suggests_hcas() {
        let root = std::env::temp_dir().join(format!("rm-ib-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        port(
            &root,
            "mlx5_1",
            1,
            "1: DOWN",
            "10 Gb/sec (4X SDR)",
            "InfiniBand",
        );
        port(
            &root,
            "mlx5_0",
            1,
            "4: ACTIVE",
            "400 Gb/sec (4X NDR)",
            "InfiniBand",
        );
        port(&root, "mlx5_2", 1, "4: ACTIVE", "100 Gb/sec", "Ethernet");
        let ports = infiniband_ports(&root);
        assert_eq!(ports.len(), 3);
        assert_eq!(
            ports[0],
            IbPort {
                device: "mlx5_0".into(),
                port: 1,
                state: "ACTIVE".into(),
                rate: "400 Gb/sec (4X NDR)".into(),
                link_layer: "InfiniBand".into()
            }
        );
        assert_eq!(
            suggest_nccl_env(&ports),
            vec![
                ("NCCL_IB_HCA".to_string(), "mlx5_0:1".to_string()),
                ("NCCL_IB_DISABLE".to_string(), "0".to_string())
            ]
        );
        assert_eq!(
            suggest_nccl_env(&ports[1..2]),
            vec![("NCCL_IB_DISABLE".to_string(), "1".to_string())]
        );
        assert!(infiniband_ports(&root.join("missing")).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}

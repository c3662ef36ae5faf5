//! InfiniBand ports from sysfs (/sys/class/infiniband/<hca>/ports/<n>/) and
//! the NCCL settings they suggest.

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

#[cfg(test)]
mod tests {
    use super::*;

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

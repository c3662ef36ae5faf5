//! Per-GPU telemetry from NVML (loaded at run time; a clean error without a
//! driver), and the `nvidia-smi --query-gpu=timestamp,name,utilization.gpu,
//! memory.used --format=csv` layout for `ringmaster gpus --csv`.

use crate::GpuError;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;
use std::time::SystemTime;

pub use proto::telemetry::GpuSample;

/// This process's NVML, started once and kept (telemetry samples every
/// few seconds; starting and shutting NVML down each time costs more than
/// the sample).
pub fn nvml() -> Result<&'static Nvml, GpuError> {
    static N: std::sync::OnceLock<Result<Nvml, String>> = std::sync::OnceLock::new();
    N.get_or_init(|| Nvml::init().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| {
            GpuError::Nvml(format!(
                "cannot load libnvidia-ml ({e}); is the NVIDIA driver installed?"
            ))
        })
}

pub fn sample() -> Result<Vec<GpuSample>, GpuError> {
    let nvml = nvml()?;
    let n = nvml
        .device_count()
        .map_err(|e| GpuError::Nvml(e.to_string()))?;
    let mut out = Vec::new();
    for i in 0..n {
        let d = nvml
            .device_by_index(i)
            .map_err(|e| GpuError::Nvml(e.to_string()))?;
        let mem = d.memory_info().map_err(|e| GpuError::Nvml(e.to_string()))?;
        // NVML_NVLINK_MAX_LINKS is 18; links that do not exist report an error.
        let nvlink_active = (0..18u32)
            .filter(|l| d.link_wrapper_for(*l).is_active().unwrap_or(false))
            .count() as u32;
        out.push(GpuSample {
            index: i,
            name: d.name().unwrap_or_else(|_| "unknown".into()),
            uuid: d.uuid().ok(),
            memory_used_mib: mem.used >> 20,
            memory_total_mib: mem.total >> 20,
            utilization_gpu_pct: d.utilization_rates().ok().map(|u| u.gpu),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
            power_w: d.power_usage().ok().map(|mw| mw as f64 / 1000.0),
            sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            nvlink_active,
            pci_bus_id: d.pci_info().ok().map(|p| p.bus_id.to_ascii_lowercase()),
        });
    }
    Ok(out)
}

/// Which workers use which GPU (NVML index -> ranks), from each worker's
/// CUDA_VISIBLE_DEVICES entry: an ordinal counts in PCI bus order (workers
/// get CUDA_DEVICE_ORDER=PCI_BUS_ID, and NVML enumerates by PCI bus id),
/// a `GPU-...` UUID is matched to NVML's; a `MIG-...` instance is left out
/// (its GPU is not in the sample). Pure, tested by table.
pub fn ranks_per_gpu(
    samples: &[GpuSample],
    workers: &[(u32, &str)],
) -> std::collections::BTreeMap<u32, Vec<u32>> {
    let mut by_bus: Vec<&GpuSample> = samples.iter().collect();
    // NVML's index order is PCI bus order already; sorting by the bus id
    // where it is known keeps that true of any sample given.
    by_bus.sort_by(|a, b| a.pci_bus_id.cmp(&b.pci_bus_id).then(a.index.cmp(&b.index)));
    let mut out: std::collections::BTreeMap<u32, Vec<u32>> = std::collections::BTreeMap::new();
    for (rank, dev) in workers {
        let gpu = if let Ok(i) = dev.trim().parse::<usize>() {
            by_bus.get(i).map(|g| g.index)
        } else if dev.starts_with("GPU-") {
            samples
                .iter()
                .find(|g| g.uuid.as_deref() == Some(dev.trim()))
                .map(|g| g.index)
        } else {
            None
        };
        if let Some(g) = gpu {
            out.entry(g).or_default().push(*rank);
        }
    }
    out
}

/// nvidia-smi's CSV header for `--query-gpu=timestamp,name,utilization.gpu,
/// memory.used,memory.total,temperature.gpu,power.draw --format=csv`.
pub const CSV_HEADER: &str = "timestamp, name, utilization.gpu [%], memory.used [MiB], memory.total [MiB], temperature.gpu, power.draw [W]";

/// One CSV row as nvidia-smi prints it: `2026/11/28 01:02:03.456, NVIDIA
/// H100 80GB HBM3, 0 %, 1 MiB, 81559 MiB, 31, 70.12 W` ("[N/A]" for a
/// figure NVML does not give).
pub fn csv_row(at: SystemTime, s: &GpuSample) -> String {
    let ts = humantime::format_rfc3339_millis(at).to_string();
    let ts = ts
        .trim_end_matches('Z')
        .replacen('-', "/", 2)
        .replace('T', " ");
    let util = s
        .utilization_gpu_pct
        .map(|u| format!("{u} %"))
        .unwrap_or_else(|| "[N/A]".into());
    let na = || "[N/A]".to_string();
    format!(
        "{ts}, {}, {util}, {} MiB, {} MiB, {}, {}",
        s.name,
        s.memory_used_mib,
        s.memory_total_mib,
        s.temperature_c.map(|t| t.to_string()).unwrap_or_else(na),
        s.power_w.map(|w| format!("{w:.2} W")).unwrap_or_else(na)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn csv_matches_nvidia_smi_layout() {
        let s = GpuSample {
            index: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: None,
            memory_used_mib: 1,
            memory_total_mib: 81559,
            utilization_gpu_pct: Some(0),
            temperature_c: None,
            power_w: None,
            sm_clock_mhz: None,
            nvlink_active: 0,
            pci_bus_id: None,
        };
        let at = UNIX_EPOCH + Duration::from_millis(1_795_827_723_456);
        assert_eq!(
            csv_row(at, &s),
            "2026/11/28 01:02:03.456, NVIDIA H100 80GB HBM3, 0 %, 1 MiB, 81559 MiB, [N/A], [N/A]"
        );
        let hot = GpuSample {
            temperature_c: Some(31),
            power_w: Some(70.125),
            ..s
        };
        assert!(csv_row(at, &hot).ends_with(", 81559 MiB, 31, 70.12 W"));
        // As many columns as the header.
        assert_eq!(
            csv_row(at, &hot).split(", ").count(),
            CSV_HEADER.split(", ").count()
        );
    }

    #[test]
    fn ranks_per_gpu_table() {
        let g = |index: u32, bus: &str, uuid: &str| GpuSample {
            index,
            name: "H100".into(),
            uuid: Some(uuid.into()),
            memory_used_mib: 0,
            memory_total_mib: 0,
            utilization_gpu_pct: None,
            temperature_c: None,
            power_w: None,
            sm_clock_mhz: None,
            nvlink_active: 0,
            pci_bus_id: Some(bus.into()),
        };
        let gpus = vec![
            g(0, "00000000:18:00.0", "GPU-a"),
            g(1, "00000000:2a:00.0", "GPU-b"),
        ];
        // (workers as (rank, CUDA_VISIBLE_DEVICES), expected map)
        let cases: Vec<(Vec<(u32, &str)>, Vec<(u32, Vec<u32>)>)> = vec![
            (
                vec![(0, "0"), (1, "1"), (2, "0")],
                vec![(0, vec![0, 2]), (1, vec![1])],
            ),
            (vec![(0, "GPU-b")], vec![(1, vec![0])]),
            (vec![(0, "MIG-x"), (1, "7")], vec![]),
        ];
        for (workers, want) in cases {
            let got: Vec<(u32, Vec<u32>)> = ranks_per_gpu(&gpus, &workers).into_iter().collect();
            assert_eq!(got, want, "{workers:?}");
        }
    }

    #[test]
    fn without_a_driver_sampling_is_a_clean_error() {
        match sample() {
            Ok(gpus) => eprintln!("NVML present: {} GPU(s)", gpus.len()),
            Err(e) => assert!(e.to_string().contains("libnvidia-ml"), "{e}"),
        }
    }
}

//! One GPU's figures as NVML gives them (`gpu::telemetry::sample`): shared
//! so that a node's worker can ship its samples to the launcher with its
//! heartbeats, and the launcher exports them per node.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct GpuSample {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub memory_used_mib: u64,
    pub memory_total_mib: u64,
    pub utilization_gpu_pct: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    /// The SM clock.
    #[serde(default)]
    pub sm_clock_mhz: Option<u32>,
    pub nvlink_active: u32,
    /// PCI bus id ("00000000:18:00.0", lower case): how a worker's device
    /// (CUDA_DEVICE_ORDER=PCI_BUS_ID) is matched to its NVML figures.
    pub pci_bus_id: Option<String>,
}

impl GpuSample {
    /// One human line: index, name, memory, utilisation, temperature, power, NVLinks.
    pub fn summary(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        format!(
            "{}: {}  {}/{} MiB  util {}  {}  {}  NVLink active {}",
            self.index,
            self.name,
            self.memory_used_mib,
            self.memory_total_mib,
            opt(self.utilization_gpu_pct.map(|u| format!("{u}%"))),
            opt(self.temperature_c.map(|t| format!("{t} C"))),
            opt(self.power_w.map(|w| format!("{w:.0} W"))),
            self.nvlink_active
        )
    }
}

//! `machines.json` and `ringmaster down`: the run's instances found again
//! by its tag after a launcher that could not give them back.

use super::creds;
use super::ec2::Ec2;
use super::request::RUN_TAG;
use crate::error::LaunchError;
use std::path::Path;

/// What `machines.json` in the run directory holds: enough for `ringmaster
/// down` to find the run's instances again.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub provider: String,
    pub run_id: String,
    pub region: String,
    pub endpoint: String,
    pub instances: Vec<String>,
}

/// `ringmaster down RUN_DIR`: terminate every instance of the run (by its
/// tag) that is not terminated yet. Returns the instances terminated.
pub fn down(run_dir: &Path) -> Result<Vec<String>, LaunchError> {
    let path = run_dir.join("machines.json");
    let text = std::fs::read_to_string(&path).map_err(LaunchError::system(format!(
        "cannot read {} (a run of provider aws writes it)",
        path.display()
    )))?;
    let r: Record = serde_json::from_str(&text)
        .map_err(|e| LaunchError::Io(format!("{}: {e}", path.display())))?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let creds = creds::credentials(&env).map_err(LaunchError::Cloud)?;
    let ec2 = Ec2::new(r.endpoint.clone(), r.region.clone(), creds);
    let live: Vec<String> = ec2
        .describe_tagged(RUN_TAG, &r.run_id)
        .map_err(|e| LaunchError::Cloud(format!("{e} (region {})", r.region)))?
        .into_iter()
        .filter(|i| !matches!(i.state.as_str(), "terminated" | "shutting-down"))
        .map(|i| i.id)
        .collect();
    ec2.terminate(&live)
        .map_err(|e| LaunchError::Cloud(format!("{e} (region {})", r.region)))?;
    Ok(live)
}

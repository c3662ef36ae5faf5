//! `catalog refresh`: the catalog with the figures of the clouds' price
//! files (capacity::refresh does the reading and applying).

use super::RefreshArgs;
use crate::capacity::{self, refresh};
use crate::error::LaunchError;
use proto::exit::LauncherExit;
use proto::SpecIssue;

pub(super) fn cmd_refresh(a: &RefreshArgs) -> Result<LauncherExit, LaunchError> {
    let bad = |flag: &str, m: String| LaunchError::Config(vec![SpecIssue::new(flag, m)]);
    type Reader = fn(&str, &str) -> Result<Vec<refresh::Quote>, String>;
    let inputs: [(&str, &Vec<std::path::PathBuf>, Reader); 3] = [
        (
            "--aws-price-list",
            &a.aws_price_list,
            refresh::aws_price_list,
        ),
        (
            "--aws-spot-history",
            &a.aws_spot_history,
            refresh::aws_spot_history,
        ),
        ("--azure-prices", &a.azure_prices, refresh::azure_retail),
    ];
    if inputs.iter().all(|(_, files, _)| files.is_empty()) {
        return Err(bad(
            "catalog refresh",
            "name at least one price file (--aws-price-list, --aws-spot-history, --azure-prices)"
                .into(),
        ));
    }
    let mut quotes = Vec::new();
    for (flag, files, read) in inputs {
        for f in files {
            let name = f.display().to_string();
            let text = std::fs::read_to_string(f)
                .map_err(LaunchError::system(format!("{flag} {name}")))?;
            let got = read(&text, &name).map_err(|e| bad(flag, e))?;
            if got.is_empty() {
                eprintln!("note: {flag} {name}: no price ringmaster reads in it");
            }
            quotes.extend(got);
        }
    }
    let (text, origin) = match &a.catalog {
        Some(p) => (
            std::fs::read_to_string(p)
                .map_err(LaunchError::system(format!("--catalog {}", p.display())))?,
            p.display().to_string(),
        ),
        None => (capacity::BUILT_IN.to_string(), "built-in catalog".into()),
    };
    let mut cat = capacity::parse_catalog(&text, &origin).map_err(|e| bad("--catalog", e))?;
    let changes = refresh::apply(&mut cat, &quotes, a.add_regions);
    let out = serde_json::to_string_pretty(&cat).expect("catalog serialises") + "\n";
    // What is written must be a catalog `plan` reads.
    capacity::parse_catalog(&out, "the refreshed catalog")
        .map_err(|e| LaunchError::Internal(format!("the refreshed catalog does not parse: {e}")))?;
    for c in &changes {
        eprintln!("{} {}: {}", c.instance_type, c.region, c.what);
    }
    eprintln!(
        "{} change(s) from {} quote(s); offers in no price file keep their figures",
        changes.len(),
        quotes.len()
    );
    match &a.out {
        Some(p) => {
            std::fs::write(p, out).map_err(LaunchError::system(format!("--out {}", p.display())))?
        }
        None => print!("{out}"),
    }
    Ok(LauncherExit::Success)
}

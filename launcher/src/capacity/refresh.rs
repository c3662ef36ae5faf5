//! `ringmaster catalog refresh`: new figures for the catalog from the
//! clouds' published price files, each figure with its source and date.
//!
//! Read here:
//! - AWS Price List bulk offer file for EC2 (`.../offers/v1.0/aws/AmazonEC2/
//!   current/<region>/index.json`): on-demand and No-Upfront standard 1- and
//!   3-year reserved hourly prices of Linux, shared-tenancy, no-software
//!   instances; dated by the file's `publicationDate`.
//! - `aws ec2 describe-spot-price-history --output json`: the newest price
//!   per zone, and the median over the zones as the region's spot price.
//! - Azure Retail Prices API pages (`https://prices.azure.com/api/retail/
//!   prices?$filter=...`): Linux consumption (spot where the SKU name says
//!   Spot; Low Priority left out) and 1- and 3-year reservations (the
//!   term's total over its hours).
//!
//! GCP's Cloud Billing Catalog prices a VM as its parts (cores, memory,
//! GPUs): not read here yet.
//!
//! Pure functions: files in, quotes out, quotes applied to a catalog.

use super::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// One figure from a price file.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub cloud: String,
    pub region: String,
    pub instance_type: String,
    /// Spot, on-demand, or a 1- or 3-year reservation (the catalog field
    /// is `market.price_field()`).
    pub market: Buy,
    /// USD per instance-hour.
    pub price: f64,
    /// "YYYY-MM".
    pub as_of: String,
    pub source: String,
    /// Spot: the zones quoted.
    pub zones: Vec<String>,
}

fn month(date: &str) -> Option<String> {
    let m = date.get(..7)?;
    (m.len() == 7 && m.as_bytes()[4] == b'-' && months_old(m, std::time::UNIX_EPOCH).is_some())
        .then(|| m.to_string())
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
    .filter(|p: &f64| p.is_finite() && *p > 0.0)
}

/// The AWS Price List bulk offer file for EC2.
pub fn aws_price_list(text: &str, origin: &str) -> Result<Vec<Quote>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    if v["offerCode"] != "AmazonEC2" {
        return Err(format!(
            "{origin}: not an AWS Price List file for EC2 (offerCode {})",
            v["offerCode"]
        ));
    }
    let published = v["publicationDate"].as_str().unwrap_or_default();
    let as_of = month(published)
        .ok_or_else(|| format!("{origin}: publicationDate {published:?} is not a date"))?;
    let source = format!(
        "AWS Price List bulk file for EC2, publicationDate {published}, Linux, shared tenancy"
    );
    let products = v["products"]
        .as_object()
        .ok_or_else(|| format!("{origin}: no products"))?;
    let mut out = Vec::new();
    for (sku, p) in products {
        let a = &p["attributes"];
        let is = |k: &str, want: &str| a[k].as_str().is_none_or(|v| v == want);
        let family = p["productFamily"].as_str().unwrap_or_default();
        if !family.starts_with("Compute Instance")
            || a["operatingSystem"] != "Linux"
            || !is("tenancy", "Shared")
            || !is("preInstalledSw", "NA")
            || !is("capacitystatus", "Used")
            || !is("licenseModel", "No License required")
        {
            continue;
        }
        let (Some(region), Some(it)) = (a["regionCode"].as_str(), a["instanceType"].as_str())
        else {
            continue;
        };
        let quote = |market, price| Quote {
            cloud: "aws".into(),
            region: region.into(),
            instance_type: it.into(),
            market,
            price,
            as_of: as_of.clone(),
            source: source.clone(),
            zones: vec![],
        };
        for term in v["terms"]["OnDemand"][sku]
            .as_object()
            .into_iter()
            .flat_map(|t| t.values())
        {
            if let Some(price) = hourly(term) {
                out.push(quote(Buy::OnDemand, price));
            }
        }
        for term in v["terms"]["Reserved"][sku]
            .as_object()
            .into_iter()
            .flat_map(|t| t.values())
        {
            let t = &term["termAttributes"];
            if t["OfferingClass"] != "standard" || t["PurchaseOption"] != "No Upfront" {
                continue;
            }
            let market = match t["LeaseContractLength"].as_str() {
                Some("1yr") => Buy::Reserved1y,
                Some("3yr") => Buy::Reserved3y,
                _ => continue,
            };
            if let Some(price) = hourly(term) {
                out.push(quote(market, price));
            }
        }
    }
    Ok(out)
}

/// A term's price per hour (its "Hrs" dimension).
fn hourly(term: &Value) -> Option<f64> {
    term["priceDimensions"]
        .as_object()?
        .values()
        .filter(|d| d["unit"] == "Hrs")
        .find_map(|d| num(&d["pricePerUnit"]["USD"]))
}

/// `aws ec2 describe-spot-price-history --output json`.
pub fn aws_spot_history(text: &str, origin: &str) -> Result<Vec<Quote>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    let rows = v["SpotPriceHistory"]
        .as_array()
        .ok_or_else(|| format!("{origin}: no SpotPriceHistory"))?;
    // (type, zone) -> the newest (timestamp, price).
    let mut newest: BTreeMap<(String, String), (String, f64)> = BTreeMap::new();
    for r in rows {
        let desc = r["ProductDescription"].as_str().unwrap_or_default();
        if desc != "Linux/UNIX" && desc != "Linux/UNIX (Amazon VPC)" {
            continue;
        }
        let (Some(it), Some(zone), Some(ts), Some(price)) = (
            r["InstanceType"].as_str(),
            r["AvailabilityZone"].as_str(),
            r["Timestamp"].as_str(),
            num(&r["SpotPrice"]),
        ) else {
            continue;
        };
        let e = newest
            .entry((it.to_string(), zone.to_string()))
            .or_insert((String::new(), 0.0));
        if ts > e.0.as_str() {
            *e = (ts.to_string(), price);
        }
    }
    // (type, region) -> zones with their newest (timestamp, price).
    type Zones = Vec<(String, String, f64)>;
    let mut by_region: BTreeMap<(String, String), Zones> = BTreeMap::new();
    for ((it, zone), (ts, price)) in newest {
        let region = zone
            .trim_end_matches(|c: char| c.is_ascii_lowercase())
            .to_string();
        by_region
            .entry((it, region))
            .or_default()
            .push((zone, ts, price));
    }
    let mut out = Vec::new();
    for ((it, region), zones) in by_region {
        let mut prices: Vec<f64> = zones.iter().map(|z| z.2).collect();
        prices.sort_by(f64::total_cmp);
        let n = prices.len();
        let median = if n % 2 == 1 {
            prices[n / 2]
        } else {
            (prices[n / 2 - 1] + prices[n / 2]) / 2.0
        };
        let latest = zones.iter().map(|z| z.1.as_str()).max().unwrap_or_default();
        let Some(as_of) = month(latest) else {
            return Err(format!("{origin}: Timestamp {latest:?} is not a date"));
        };
        out.push(Quote {
            cloud: "aws".into(),
            region,
            instance_type: it,
            market: Buy::Spot,
            price: median,
            as_of,
            source: format!(
                "EC2 DescribeSpotPriceHistory, Linux/UNIX: the median of the newest price in {} zone(s), newest {latest}",
                n
            ),
            zones: zones.into_iter().map(|z| z.0).collect(),
        });
    }
    Ok(out)
}

/// One page of the Azure Retail Prices API.
pub fn azure_retail(text: &str, origin: &str) -> Result<Vec<Quote>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    let items = v["Items"]
        .as_array()
        .ok_or_else(|| format!("{origin}: no Items (a Retail Prices API page has them)"))?;
    let mut out = Vec::new();
    for i in items {
        let s = |k: &str| i[k].as_str().unwrap_or_default();
        if s("serviceName") != "Virtual Machines"
            || s("currencyCode") != "USD"
            || s("productName").contains("Windows")
            || s("skuName").contains("Low Priority")
            || s("unitOfMeasure") != "1 Hour"
        {
            continue;
        }
        let Some(price) = num(&i["retailPrice"]) else {
            continue;
        };
        let market = match (s("type"), s("reservationTerm")) {
            ("Consumption", _) if s("skuName").contains("Spot") => Buy::Spot,
            ("Consumption", _) => Buy::OnDemand,
            ("Reservation", "1 Year") => Buy::Reserved1y,
            ("Reservation", "3 Years") => Buy::Reserved3y,
            _ => continue,
        };
        // A reservation's price is the whole term's.
        let price = price / term_hours(market).unwrap_or(1.0);
        let Some(as_of) = month(s("effectiveStartDate")) else {
            continue;
        };
        out.push(Quote {
            cloud: "azure".into(),
            region: s("armRegionName").into(),
            instance_type: s("armSkuName").into(),
            market,
            price,
            as_of,
            source: format!(
                "Azure Retail Prices API, {} {} ({}), effective {}",
                s("productName"),
                s("skuName"),
                s("type"),
                s("effectiveStartDate")
            ),
            zones: vec![],
        });
    }
    Ok(out)
}

/// One change `apply` made, for the user to read.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub instance_type: String,
    pub region: String,
    pub what: String,
}

/// Apply `quotes` to `cat`: a quote for an offer's (cloud, region,
/// instance type) replaces that figure, its source and its date, and the
/// figure is no longer an estimate; with `add_regions`, a quote for a
/// region the catalog lacks adds an offer there (the hardware copied from
/// the same instance type elsewhere; it needs an on-demand quote). Where
/// one figure is quoted twice, the newer date wins.
pub fn apply(cat: &mut Catalog, quotes: &[Quote], add_regions: bool) -> Vec<Change> {
    let mut changes = Vec::new();
    // The newest quote per (cloud, region, type, field).
    let mut best: BTreeMap<(&str, &str, &str, &str), &Quote> = BTreeMap::new();
    for q in quotes {
        let k = (
            q.cloud.as_str(),
            q.region.as_str(),
            q.instance_type.as_str(),
            q.market.price_field(),
        );
        if best.get(&k).is_none_or(|b| q.as_of >= b.as_of) {
            best.insert(k, q);
        }
    }
    let mut groups: BTreeMap<(&str, &str, &str), Vec<&Quote>> = BTreeMap::new();
    for ((c, r, it, _), q) in best {
        groups.entry((c, r, it)).or_default().push(q);
    }
    for ((cloud, region, it), qs) in groups {
        let at = cat
            .offers
            .iter()
            .position(|o| o.cloud == cloud && o.region == region && o.instance_type == it);
        let i = match at {
            Some(i) => i,
            None if add_regions => {
                let Some(base) = cat
                    .offers
                    .iter()
                    .find(|o| o.cloud == cloud && o.instance_type == it)
                else {
                    continue;
                };
                if !qs.iter().any(|q| q.market == Buy::OnDemand) {
                    continue;
                }
                let mut o = base.clone();
                o.region = region.to_string();
                o.zones = vec![];
                o.price_per_hour = Prices {
                    on_demand: 0.0,
                    spot: None,
                    reserved_1y: None,
                    reserved_3y: None,
                };
                o.sources = BTreeMap::new();
                o.dates = BTreeMap::new();
                o.estimated = vec![];
                o.short_term = vec![];
                if o.spot_interruption.is_some() {
                    o.estimated.push("spot_interruption".into());
                    o.sources.insert(
                        "spot_interruption".into(),
                        format!(
                            "copied from {}: the Spot Instance Advisor has this region's bracket",
                            base.region
                        ),
                    );
                }
                o.as_of = qs.iter().map(|q| q.as_of.clone()).max().unwrap_or_default();
                changes.push(Change {
                    instance_type: it.into(),
                    region: region.into(),
                    what: format!("added (hardware as in {})", base.region),
                });
                cat.offers.push(o);
                cat.offers.len() - 1
            }
            None => continue,
        };
        let o = &mut cat.offers[i];
        for q in qs {
            let field = q.market.price_field();
            if q.market == Buy::Spot && o.spot_interruption.is_none() {
                changes.push(Change {
                    instance_type: it.into(),
                    region: region.into(),
                    what: format!(
                        "spot {} not taken: the offer has no spot_interruption bracket to go with it",
                        q.price
                    ),
                });
                continue;
            }
            // A quoted figure newer than the file's stays.
            let current = o.figure_as_of(field).to_string();
            let quoted = q.market.price(&o.price_per_hour).is_some()
                && !o.estimated.iter().any(|f| f == field);
            if quoted && current > q.as_of {
                changes.push(Change {
                    instance_type: it.into(),
                    region: region.into(),
                    what: format!(
                        "{field} kept: the catalog's figure ({current}) is newer than the file's ({})",
                        q.as_of
                    ),
                });
                continue;
            }
            let p = &mut o.price_per_hour;
            let slot = match q.market {
                Buy::Spot => p.spot.get_or_insert(0.0),
                Buy::Reserved1y => p.reserved_1y.get_or_insert(0.0),
                Buy::Reserved3y => p.reserved_3y.get_or_insert(0.0),
                _ => &mut p.on_demand,
            };
            let before = *slot;
            // Micro-dollars are precision enough (a term's total over its
            // hours has many digits).
            *slot = (q.price * 1e6).round() / 1e6;
            changes.push(Change {
                instance_type: it.into(),
                region: region.into(),
                what: if before > 0.0 {
                    format!("{field} {before} ({current}) -> {} ({})", *slot, q.as_of)
                } else {
                    format!("{field} {} ({})", *slot, q.as_of)
                },
            });
            o.dates.insert(field.into(), q.as_of.clone());
            let key = if term_hours(q.market).is_some() {
                "reserved"
            } else {
                field
            };
            o.sources.insert(key.into(), q.source.clone());
            o.estimated.retain(|f| f != field);
            if q.market == Buy::Spot && o.zones.is_empty() {
                o.zones = q.zones.clone();
            }
        }
        // A figure dated as the entry itself needs no date of its own.
        let as_of = o.as_of.clone();
        o.dates.retain(|_, d| *d != as_of);
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWS: &str = include_str!("../../../tests/fixtures/prices/aws-ec2-price-list.json");
    const SPOT: &str = include_str!("../../../tests/fixtures/prices/aws-spot-price-history.json");
    const AZURE: &str = include_str!("../../../tests/fixtures/prices/azure-retail-prices.json");

    fn short(q: &[Quote]) -> Vec<(String, String, &'static str, f64, String)> {
        let mut v: Vec<_> = q
            .iter()
            .map(|q| {
                (
                    q.region.clone(),
                    q.instance_type.clone(),
                    q.market.price_field(),
                    (q.price * 1e6).round() / 1e6,
                    q.as_of.clone(),
                )
            })
            .collect();
        v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        v
    }

    fn row(
        r: &str,
        it: &str,
        f: &'static str,
        p: f64,
        d: &str,
    ) -> (String, String, &'static str, f64, String) {
        (r.into(), it.into(), f, p, d.into())
    }

    #[test]
    fn each_file_yields_the_figures_ringmaster_prices_with() {
        // Linux, shared tenancy, no software, used capacity; No-Upfront
        // standard reservations (not convertible, not All Upfront).
        assert_eq!(
            short(&aws_price_list(AWS, "f").unwrap()),
            vec![
                row("us-east-1", "m5.large", "on_demand", 0.096, "2025-06"),
                row("us-east-1", "p5.48xlarge", "on_demand", 55.04, "2025-06"),
                row("us-east-1", "p5.48xlarge", "reserved_1y", 38.5, "2025-06"),
                row("us-east-1", "p5.48xlarge", "reserved_3y", 27.2, "2025-06"),
                row("us-west-2", "p5.48xlarge", "on_demand", 55.04, "2025-06"),
            ]
        );
        // The newest Linux price per zone (1a: 24, not May's 30; the
        // Windows row left out), the median over the zones (24, 26, 29).
        let spot = aws_spot_history(SPOT, "f").unwrap();
        assert_eq!(
            short(&spot),
            vec![
                row("us-east-1", "p5.48xlarge", "spot", 26.0, "2025-06"),
                row("us-west-2", "p5.48xlarge", "spot", 23.0, "2025-06"),
            ]
        );
        assert_eq!(spot[0].zones, ["us-east-1a", "us-east-1b", "us-east-1c"]);
        // Consumption (spot by its SKU name), reservations as the term's
        // total over its hours; Windows, Low Priority, Dev/Test left out.
        assert_eq!(
            short(&azure_retail(AZURE, "f").unwrap()),
            vec![
                row(
                    "eastus",
                    "Standard_ND96isr_H100_v5",
                    "on_demand",
                    98.32,
                    "2025-07"
                ),
                row(
                    "eastus",
                    "Standard_ND96isr_H100_v5",
                    "reserved_1y",
                    (530000.0f64 / 8760.0 * 1e6).round() / 1e6,
                    "2025-07"
                ),
                row(
                    "eastus",
                    "Standard_ND96isr_H100_v5",
                    "reserved_3y",
                    (1150000.0f64 / 26280.0 * 1e6).round() / 1e6,
                    "2025-07"
                ),
                row(
                    "eastus",
                    "Standard_ND96isr_H100_v5",
                    "spot",
                    35.1,
                    "2025-07"
                ),
            ]
        );
    }

    #[test]
    fn a_file_of_another_kind_is_a_clear_error() {
        assert!(aws_price_list(AZURE, "x.json")
            .unwrap_err()
            .starts_with("x.json: not an AWS Price List file for EC2"));
        assert_eq!(
            aws_spot_history(AWS, "x.json").unwrap_err(),
            "x.json: no SpotPriceHistory"
        );
        assert!(azure_retail(SPOT, "x.json")
            .unwrap_err()
            .starts_with("x.json: no Items"));
        assert!(aws_price_list("{", "x.json")
            .unwrap_err()
            .starts_with("x.json: EOF"));
    }

    #[test]
    fn quotes_replace_figures_with_their_source_and_date() {
        let mut cat = parse_catalog(BUILT_IN, "built-in").unwrap();
        let mut quotes = aws_price_list(AWS, "f").unwrap();
        quotes.extend(aws_spot_history(SPOT, "f").unwrap());
        let n = cat.offers.len();
        let changes = apply(&mut cat, &quotes, false);
        // No region added without --add-regions; m5.large is no offer.
        assert_eq!(cat.offers.len(), n);
        let p5 = cat
            .offers
            .iter()
            .find(|o| o.instance_type == "p5.48xlarge" && o.region == "us-east-1")
            .unwrap();
        assert_eq!(p5.price_per_hour.on_demand, 55.04);
        assert_eq!(p5.figure_as_of("on_demand"), "2025-06");
        assert!(p5.sources["on_demand"].contains("publicationDate 2025-06-05"));
        // The reservations were estimates: now quoted.
        assert!(
            !p5.estimated.iter().any(|f| f.starts_with("reserved")),
            "{:?}",
            p5.estimated
        );
        // The catalog's spot price (2026-09, quoted) is newer than the
        // file's (2025-06): kept, and said so.
        assert_eq!(p5.price_per_hour.spot, Some(42.278));
        assert!(
            changes.iter().any(|c| c.what
                == "spot kept: the catalog's figure (2026-09) is newer than the file's (2025-06)"),
            "{changes:?}"
        );
        assert!(
            changes
                .iter()
                .any(|c| c.what == "on_demand 98.32 (2024-06) -> 55.04 (2025-06)"),
            "{changes:?}"
        );
        // With --add-regions: us-west-2 gets a p5 offer, priced and zoned
        // by the files, its bracket copied (and marked an estimate).
        apply(&mut cat, &quotes, true);
        let w2 = cat
            .offers
            .iter()
            .find(|o| o.instance_type == "p5.48xlarge" && o.region == "us-west-2")
            .unwrap();
        assert_eq!(
            (w2.price_per_hour.on_demand, w2.price_per_hour.spot),
            (55.04, Some(23.0))
        );
        assert_eq!(w2.zones, ["us-west-2a", "us-west-2b"]);
        assert_eq!(w2.estimated, ["spot_interruption"]);
        assert_eq!((w2.gpus, w2.gpu.as_str()), (8, "H100"));
        // What apply wrote is a catalog plan reads.
        parse_catalog(&serde_json::to_string(&cat).unwrap(), "refreshed").unwrap();
    }
}

//! The ranking as `ringmaster plan` prints it.

use super::*;

/// The ranked table, for people.
pub fn human(r: &Ranking) -> String {
    let policy = serde_json::to_value(r.market).expect("market serialises");
    let mut out = format!(
        "capacity for {} (market policy {})\n",
        r.request,
        policy.as_str().unwrap_or("?")
    );
    out.push_str(&format!(
        "{:>3}  {:<6} {:<14} {:<26} {:<20} {:>10} {:>8} {:>9} {:>8} {:>11}  {}\n",
        "#",
        "cloud",
        "region",
        "instance",
        "market",
        "$/h (all)",
        "preempt",
        "overhd h",
        "hours",
        "total $",
        ""
    ));
    for (i, c) in r.candidates.iter().enumerate() {
        out.push_str(&format!(
            "{:>3}  {:<6} {:<14} {:<26} {:<20} {:>10.2} {:>8.3} {:>9.2} {:>8.1} {:>11.2}  {}\n",
            i + 1,
            c.cloud,
            c.region,
            c.instance_type,
            c.market_label(),
            c.price_per_hour,
            c.expected_preemptions,
            c.expected_overhead_hours,
            c.expected_hours,
            c.expected_cost,
            note(c)
        ));
    }
    out.push_str(&format!("pick: {}\n", r.reason));
    if !r.failover.is_empty() {
        out.push_str(&format!(
            "fails over to: {} (when a zone has no capacity)\n",
            r.failover.join(", then ")
        ));
    }
    let dates: std::collections::BTreeSet<&str> = r
        .candidates
        .iter()
        .map(|c| c.price_as_of.as_str())
        .filter(|d| !d.is_empty())
        .collect();
    if !dates.is_empty() {
        out.push_str(&format!(
            "prices as of {} (the catalog's dates; check the clouds' pages before buying)\n",
            dates.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if r.candidates.iter().any(|c| c.cost_range.is_some()) {
        out.push_str(
            "spot ranges: preemptions and total at the bounds of the offer's monthly interruption bracket (>20% taken as at most 30%)\n",
        );
    }
    if !r.rejected.is_empty() {
        out.push_str("not considered:\n");
        for x in &r.rejected {
            out.push_str(&format!(
                "  {} ({}): {}\n",
                x.instance_type, x.region, x.reason
            ));
        }
    }
    out
}

/// A candidate's notes: its role, then what a buyer must know.
fn note(c: &Candidate) -> String {
    let mut note = c.role.to_string();
    if c.owned_nodes > 0 {
        note.push_str(&format!(" ({} node(s) owned", c.owned_nodes));
        if !c.owned_ids.is_empty() {
            note.push_str(&format!(": {}", c.owned_ids.join(", ")));
        }
        if let Some(u) = &c.owned_until {
            note.push_str(&format!(", until {u}"));
        }
        note.push(')');
    }
    if let (Some([plo, phi]), Some([clo, chi])) = (c.preemptions_range, c.cost_range) {
        note.push_str(&format!(
            " (preemptions {plo:.2}-{phi:.2}, total ${clo:.0}-${chi:.0}; bracket as of {})",
            c.interruption_as_of.as_deref().unwrap_or("?")
        ));
    }
    if let (Some(total), Some(be)) = (c.commitment_usd, c.break_even_hours_per_year) {
        note.push_str(&format!(
            " (a {} commitment of ${total:.0}; pays off above {be:.0} h/year of use)",
            c.market.name()
        ));
    }
    if let (Some(term), Some(obtain)) = (c.term_hours, &c.obtain) {
        note.push_str(&format!(
            " ({} instance(s) for {}; {obtain})",
            c.bought_nodes,
            duration_words(term)
        ));
    }
    if !c.estimated.is_empty() {
        note.push_str(&format!(" (estimated: {})", c.estimated.join(", ")));
    }
    if c.price_stale {
        note.push_str(&format!(
            " STALE price (as of {}, over {STALE_AFTER_MONTHS} months old)",
            c.price_as_of
        ));
    }
    note
}

/// "3 days", "5 h".
fn duration_words(hours: f64) -> String {
    if hours >= 24.0 && (hours / 24.0).fract() == 0.0 {
        format!("{:.0} day(s)", hours / 24.0)
    } else {
        format!("{hours:.0} h")
    }
}

//! report.html: a run's report as one self-contained page (inline SVG and
//! CSS, no script, nothing fetched when opened), written next to
//! report.json at the end of every run and by `ringmaster report RUN_DIR`.
//! A timeline of attempts, node events, notices with their agreed stop
//! steps, checkpoints and restarts; the loss, each rank's step rate and
//! step over time (from progress.jsonl, one sample a second); the cost
//! over time where the provider bills. Every chart is an `<svg
//! class="chart">` whose series are `<polyline class="series">` elements,
//! and every timeline mark has `class="mark" data-kind=...`, so a browser
//! test can count them from the DOM.

use crate::status::Sample;
use proto::events::{Line, RunEvent};
use proto::report::Report;
use std::fmt::Write;
use std::path::{Path, PathBuf};

pub const FILE: &str = "report.html";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 900.0;
const H: f64 = 220.0;
const PAD_L: f64 = 60.0;
const PAD_B: f64 = 30.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A line chart over the run's seconds: one polyline per series.
fn chart(
    id: &str,
    title: &str,
    unit: &str,
    series: &[(String, Vec<(f64, f64)>)],
    x_max: f64,
) -> String {
    let pts: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .collect();
    let (y_min, y_max) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(*y), b.max(*y))
        });
    let mut out = format!("<h2>{}</h2>\n", esc(title));
    if pts.is_empty() {
        out.push_str(&format!(
            "<p class=\"empty\" id=\"{id}\">No figures for this chart in this run.</p>\n"
        ));
        return out;
    }
    let (y_min, y_max) = if y_max > y_min {
        (y_min.min(0.0), y_max)
    } else {
        (y_min.min(0.0), y_min.abs().max(1.0) + y_min.max(0.0))
    };
    let x_max = x_max.max(1e-9);
    let sx = |x: f64| PAD_L + x / x_max * (W - PAD_L - 10.0);
    let sy = |y: f64| 10.0 + (1.0 - (y - y_min) / (y_max - y_min)) * (H - PAD_B - 10.0);
    let _ = writeln!(
        out,
        "<svg class=\"chart\" id=\"{id}\" data-series=\"{}\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\">",
        series.len(),
        esc(title)
    );
    let _ = writeln!(
        out,
        "<line x1=\"{PAD_L}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" class=\"axis\"/><line x1=\"{PAD_L}\" y1=\"10\" x2=\"{PAD_L}\" y2=\"{0}\" class=\"axis\"/>",
        H - PAD_B,
        W - 10.0
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" class=\"tick\">0 s</text><text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{:.0} s</text>",
        PAD_L,
        H - 10.0,
        W - 10.0,
        H - 10.0,
        x_max
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"18\" class=\"tick\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{}</text>",
        PAD_L - 4.0,
        fmt(y_max, unit),
        PAD_L - 4.0,
        H - PAD_B,
        fmt(y_min, unit)
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let points: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline class=\"series\" data-name=\"{}\" data-points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"><title>{}</title></polyline>",
            esc(name),
            p.len(),
            COLORS[i % COLORS.len()],
            points.join(" "),
            esc(name)
        );
    }
    out.push_str("</svg>\n<p class=\"legend\">");
    for (i, (name, _)) in series.iter().enumerate() {
        let _ = write!(
            out,
            "<span style=\"color:{}\">&#9632;</span> {} ",
            COLORS[i % COLORS.len()],
            esc(name)
        );
    }
    out.push_str("</p>\n");
    out
}

fn fmt(v: f64, unit: &str) -> String {
    if v.abs() >= 100.0 || v == 0.0 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.3}{unit}")
    }
}

/// The timeline: attempts as bars, and marks for node events, notices,
/// checkpoints and restarts.
fn timeline(events: &[Line], x_max: f64) -> String {
    let x_max = x_max.max(1e-9);
    let sx = |x: f64| PAD_L + x / x_max * (W - PAD_L - 10.0);
    let rows = ["attempts", "nodes", "notices", "checkpoints"];
    let row_y = |r: usize| 20.0 + r as f64 * 30.0;
    let height = 20.0 + rows.len() as f64 * 30.0 + 20.0;
    let mut out = format!(
        "<h2>Timeline</h2>\n<svg class=\"timeline\" id=\"timeline\" viewBox=\"0 0 {W} {height}\" width=\"{W}\" height=\"{height}\">\n"
    );
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"4\" y=\"{}\" class=\"tick\">{r}</text>",
            row_y(i) + 14.0
        );
    }
    let mut open: Option<(u32, f64)> = None;
    let mark = |out: &mut String, kind: &str, row: usize, t: f64, color: &str, label: String| {
        let _ = writeln!(
            out,
            "<rect class=\"mark\" data-kind=\"{kind}\" x=\"{:.1}\" y=\"{}\" width=\"3\" height=\"20\" fill=\"{color}\"><title>{}</title></rect>",
            sx(t) - 1.5,
            row_y(row),
            esc(&label)
        );
    };
    for l in events {
        let t = l.elapsed_s;
        match &l.event {
            RunEvent::AttemptStarted { attempt, .. } => open = Some((*attempt, t)),
            RunEvent::AttemptEnded {
                attempt,
                outcome,
                message,
                restarting,
                ..
            } => {
                let start = open.take().map(|(_, s)| s).unwrap_or(0.0);
                let color = match outcome.as_str() {
                    "succeeded" => "#2ca02c",
                    "preempted" => "#ff7f0e",
                    _ => "#d62728",
                };
                let _ = writeln!(
                    out,
                    "<rect class=\"mark attempt\" data-kind=\"attempt\" x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"20\" fill=\"{color}\"><title>attempt {attempt}: {}{}</title></rect>",
                    sx(start),
                    row_y(0),
                    (sx(t) - sx(start)).max(2.0),
                    esc(outcome),
                    esc(&message.clone().map(|m| format!(": {m}")).unwrap_or_default())
                );
                if *restarting {
                    mark(
                        &mut out,
                        "restart",
                        0,
                        t,
                        "#000",
                        format!("restart after attempt {attempt}"),
                    );
                }
            }
            RunEvent::NodeLost { node, .. } => mark(
                &mut out,
                "node-lost",
                1,
                t,
                "#d62728",
                format!("node {node} lost"),
            ),
            RunEvent::NodeReplaced {
                node, vm, market, ..
            } => mark(
                &mut out,
                "node-replaced",
                1,
                t,
                "#2ca02c",
                format!("node {node} replaced by {vm} ({market})"),
            ),
            RunEvent::NoticeSent {
                source, stop_step, ..
            } => mark(
                &mut out,
                "notice",
                2,
                t,
                "#ff7f0e",
                format!(
                    "notice{}{}",
                    source
                        .as_ref()
                        .map(|s| format!(" from {s}"))
                        .unwrap_or_default(),
                    stop_step
                        .map(|s| format!(", stop at step {s}"))
                        .unwrap_or_default()
                ),
            ),
            RunEvent::WorkerNote { kind, detail, .. } if kind == "checkpoint_committed" => mark(
                &mut out,
                "checkpoint",
                3,
                t,
                "#1f77b4",
                format!("checkpoint of step {} committed", detail["step"]),
            ),
            RunEvent::CheckpointCommitted { step, .. } => mark(
                &mut out,
                "checkpoint",
                3,
                t,
                "#1f77b4",
                format!("checkpoint of step {step} committed"),
            ),
            _ => {}
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The page for a run.
pub fn page(report: &Report, events: &[Line], samples: &[Sample]) -> String {
    let x_max = report
        .duration_s
        .max(samples.last().map(|s| s.t).unwrap_or(0.0));
    let mut ranks: std::collections::BTreeMap<u32, (Vec<(f64, f64)>, Vec<(f64, f64)>)> =
        Default::default();
    let mut loss = Vec::new();
    let mut cost = Vec::new();
    for s in samples {
        let mut ls = Vec::new();
        for r in &s.ranks {
            let e = ranks.entry(r.rank).or_default();
            if let Some(v) = r.steps_per_s {
                e.0.push((s.t, v));
            }
            if let Some(step) = r.step {
                e.1.push((s.t, step as f64));
            }
            if let Some(l) = r.loss {
                ls.push(l);
            }
        }
        if !ls.is_empty() {
            loss.push((s.t, ls.iter().sum::<f64>() / ls.len() as f64));
        }
        if let Some(c) = s.cost {
            cost.push((s.t, c));
        }
    }
    let rate: Vec<(String, Vec<(f64, f64)>)> = ranks
        .iter()
        .map(|(r, (v, _))| (format!("rank {r}"), v.clone()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let step: Vec<(String, Vec<(f64, f64)>)> = ranks
        .iter()
        .map(|(r, (_, v))| (format!("rank {r}"), v.clone()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let loss: Vec<(String, Vec<(f64, f64)>)> = if loss.is_empty() {
        vec![]
    } else {
        vec![("mean loss".to_string(), loss)]
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{} <small>{}</small></h1>\n<table class=\"facts\">",
        esc(&report.name),
        esc(&report.run_id)
    );
    let mut fact = |k: &str, v: String| {
        let _ = write!(body, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    };
    fact(
        "status",
        format!(
            "{} (exit {}, {})",
            report.status, report.exit_code, report.exit_name
        ),
    );
    if let Some(m) = &report.message {
        fact("message", m.clone());
    }
    fact(
        "workload",
        format!("{} on {}", report.workload, report.provider),
    );
    fact(
        "shape",
        format!(
            "{} node(s) x {} = {} rank(s)",
            report.nodes, report.devices_per_node, report.world_size
        ),
    );
    fact(
        "duration",
        format!(
            "{:.1} s, {} attempt(s), {} restart(s)",
            report.duration_s,
            report.attempts.len(),
            report.restarts
        ),
    );
    if let Some(g) = &report.goodput {
        fact(
            "goodput",
            format!(
                "{} useful of {} steps computed",
                g.steps_useful, g.steps_computed
            ),
        );
    }
    if let Some(c) = &report.cost {
        fact(
            "cost",
            format!(
                "${:.4} ({:.4} node-hours); on demand ${:.4}",
                c.cost_usd, c.node_hours, c.on_demand_equivalent_usd
            ),
        );
    }
    body.push_str("</table>\n");
    body.push_str(&timeline(events, x_max));
    body.push_str(&chart("loss", "Loss (mean over ranks)", "", &loss, x_max));
    body.push_str(&chart(
        "rate",
        "Step rate per rank (steps/s)",
        "",
        &rate,
        x_max,
    ));
    body.push_str(&chart("steps", "Step per rank", "", &step, x_max));
    let cost: Vec<(String, Vec<(f64, f64)>)> = if cost.is_empty() {
        vec![]
    } else {
        vec![("cost so far (USD)".into(), cost)]
    };
    body.push_str(&chart("cost", "Cost over time (USD)", "", &cost, x_max));
    body.push_str("<h2>Attempts</h2>\n<table class=\"attempts\"><tr><th>attempt</th><th>outcome</th><th>seconds</th><th>steps</th><th>message</th></tr>");
    for a in &report.attempts {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
            a.attempt,
            esc(&a.outcome),
            a.duration_s,
            esc(&format!(
                "{} to {}",
                a.started_at_step
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                a.reached_step
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into())
            )),
            esc(a.message.as_deref().unwrap_or(""))
        );
    }
    body.push_str("</table>\n");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ringmaster: {}</title>\n<style>\nbody{{font-family:sans-serif;margin:24px;color:#222}} h2{{margin-top:28px;font-size:18px}} .axis{{stroke:#888}} .tick{{font-size:11px;fill:#555}} table{{border-collapse:collapse}} td,th{{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}} .legend{{font-size:12px}} .empty{{color:#888}}\n</style></head>\n<body>\n{body}</body></html>\n",
        esc(&report.run_id)
    )
}

/// Write `dir`/report.html from the run's report.json, events.jsonl and
/// progress.jsonl; returns its path.
pub fn write_for(dir: &Path) -> Result<PathBuf, String> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    let report: Report =
        serde_json::from_str(&read("report.json")?).map_err(|e| format!("report.json: {e}"))?;
    let events: Vec<Line> = read("events.jsonl")?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| Line::parse(l).ok())
        .collect();
    let samples: Vec<Sample> = read(crate::status::HISTORY)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let path = dir.join(FILE);
    std::fs::write(&path, page(&report, &events, &samples))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

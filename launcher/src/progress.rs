//! What the user sees while a job runs: indicatif bars on a terminal (one per
//! node plus the whole run), plain periodic lines otherwise, nothing with
//! --quiet. `Console` prints lines without tearing the bars.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::wire::Heartbeat;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Console {
    bars: Option<MultiProgress>,
    quiet: bool,
}

impl Console {
    pub fn new(quiet: bool) -> Console {
        let bars = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)));
        Console { bars, quiet }
    }
    /// A line for the user (stderr; stdout is kept for --json and --tee).
    pub fn note(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(mp) => {
                let _ = mp.println(msg);
            }
            None => eprintln!("{msg}"),
        }
    }
    /// A mirrored worker output line (stdout), shown even with --quiet.
    pub fn line(&self, msg: &str) {
        match &self.bars {
            Some(mp) => mp.suspend(|| println!("{msg}")),
            None => println!("{msg}"),
        }
    }
}

/// Per-node and overall progress, fed with each rank's last heartbeat.
pub struct Display {
    console: Console,
    bars: Option<(Vec<ProgressBar>, ProgressBar)>,
    last_plain: Instant,
    nodes: u32,
    local: u32,
    /// The latest NVML sample of this machine's GPUs, one line.
    gpus: Option<String>,
    gpu_bar: Option<ProgressBar>,
}

/// One line for the display from an NVML sample: per GPU, utilisation,
/// memory, power, temperature (what `nvidia-smi` would show).
pub fn gpu_line(samples: &[gpu::telemetry::GpuSample]) -> String {
    let per: Vec<String> = samples
        .iter()
        .map(|g| {
            let mut s = format!(
                "gpu{} {}% {:.1}/{:.1} GiB",
                g.index,
                g.utilization_gpu_pct
                    .map_or("?".to_string(), |u| u.to_string()),
                g.memory_used_mib as f64 / 1024.0,
                g.memory_total_mib as f64 / 1024.0
            );
            if let Some(w) = g.power_w {
                s.push_str(&format!(" {w:.0} W"));
            }
            if let Some(t) = g.temperature_c {
                s.push_str(&format!(" {t}C"));
            }
            s
        })
        .collect();
    per.join(" | ")
}

fn fmt_rate(rate: Option<f64>, unit: Option<&str>) -> String {
    match rate {
        Some(r) => format!("{r:.1} {}", unit.unwrap_or("")),
        None => String::new(),
    }
}

impl Display {
    pub fn new(console: &Console, nodes: u32, local: u32) -> Display {
        let bars = console.bars.as_ref().map(|mp| {
            let style =
                ProgressStyle::with_template("{prefix:>8} [{bar:30.cyan/blue}] {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> ");
            let node_bars: Vec<ProgressBar> = (0..nodes)
                .map(|n| {
                    let b = mp.add(
                        ProgressBar::new(1)
                            .with_style(style.clone())
                            .with_prefix(format!("node-{n}")),
                    );
                    b.enable_steady_tick(Duration::from_millis(250));
                    b
                })
                .collect();
            let total_style = ProgressStyle::with_template(
                "{prefix:>8} [{bar:30.green/white}] {pos}/{len} {msg} (ETA {eta})",
            )
            .expect("valid template")
            .progress_chars("=> ");
            let total = mp.add(
                ProgressBar::new(1)
                    .with_style(total_style)
                    .with_prefix("total"),
            );
            (node_bars, total)
        });
        Display {
            console: console.clone(),
            bars,
            last_plain: Instant::now(),
            nodes,
            local,
            gpus: None,
            gpu_bar: None,
        }
    }

    /// A new NVML sample (GPU jobs, every few seconds): a line under the
    /// bars, or appended to the plain progress lines.
    pub fn set_gpus(&mut self, samples: &[gpu::telemetry::GpuSample]) {
        if self.console.quiet || samples.is_empty() {
            return;
        }
        let line = gpu_line(samples);
        if let (Some(mp), None) = (&self.console.bars, &self.gpu_bar) {
            let bar = mp.add(ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix:>8} {msg}").expect("valid template"),
            ));
            bar.set_prefix("gpus");
            self.gpu_bar = Some(bar);
        }
        if let Some(bar) = &self.gpu_bar {
            bar.set_message(line.clone());
        }
        self.gpus = Some(line);
    }

    /// `beats[rank]` is the latest heartbeat of each rank, if any.
    pub fn update(&mut self, attempt: u32, beats: &[Option<Heartbeat>]) {
        if self.console.quiet {
            return;
        }
        let known: Vec<&Heartbeat> = beats.iter().flatten().collect();
        let Some(first) = known.first() else { return };
        let total = first.total_steps;
        let min_step = if known.len() == beats.len() {
            known.iter().map(|b| b.step).min().unwrap_or(0)
        } else {
            0
        };
        // Loss is the all-reduced mean, equal on every rank at a given
        // step; show the most advanced rank's.
        let loss = known
            .iter()
            .filter(|b| b.loss.is_some())
            .max_by_key(|b| b.step)
            .and_then(|b| b.loss);
        let unit = first.rate_unit.as_deref();
        // Training rates are global (samples/s of the whole run); per-rank
        // rates (GFLOP/s, busbw) are summed or shown per node.
        match &self.bars {
            Some((node_bars, total_bar)) => {
                for n in 0..self.nodes {
                    let ranks = (n * self.local..(n + 1) * self.local)
                        .filter_map(|r| beats.get(r as usize).cloned().flatten());
                    let ranks: Vec<Heartbeat> = ranks.collect();
                    let bar = &node_bars[n as usize];
                    if let Some(b) = ranks.iter().max_by_key(|b| b.step) {
                        bar.set_length(b.total_steps.max(1));
                        bar.set_position(ranks.iter().map(|b| b.step).min().unwrap_or(0));
                        let rate: f64 = ranks.iter().filter_map(|b| b.rate).sum();
                        let loss = b.loss.map(|l| format!("loss {l:.5} ")).unwrap_or_default();
                        let rate = if b.rate_unit.as_deref() == Some("samples/s") {
                            String::new()
                        } else {
                            fmt_rate(Some(rate), b.rate_unit.as_deref())
                        };
                        bar.set_message(format!("{} {loss}{rate}", b.phase));
                    }
                }
                total_bar.set_length(total.max(1));
                total_bar.set_position(min_step);
                let rate = if unit == Some("samples/s") {
                    fmt_rate(first.rate, unit)
                } else {
                    fmt_rate(Some(known.iter().filter_map(|b| b.rate).sum()), unit)
                };
                total_bar.set_message(format!(
                    "attempt {attempt} {}{rate}",
                    loss.map(|l| format!("loss {l:.5} ")).unwrap_or_default()
                ));
            }
            None => {
                if self.last_plain.elapsed() < Duration::from_secs(2) {
                    return;
                }
                self.last_plain = Instant::now();
                let pct = if total > 0 {
                    format!(" ({:.0}%)", 100.0 * min_step as f64 / total as f64)
                } else {
                    String::new()
                };
                let rate = if unit == Some("samples/s") {
                    fmt_rate(first.rate, unit)
                } else {
                    fmt_rate(Some(known.iter().filter_map(|b| b.rate).sum()), unit)
                };
                let gpus = self
                    .gpus
                    .as_ref()
                    .map(|g| format!(" [{g}]"))
                    .unwrap_or_default();
                if total == 0 && known.iter().all(|b| b.step == 0) {
                    // A program that reports no steps (no `ringmaster`
                    // package): nothing to count.
                    self.console.note(&format!(
                        "[ringmaster] attempt {attempt}: {} running, {} rank(s) alive (no steps reported){gpus}",
                        first.phase,
                        known.len()
                    ));
                    return;
                }
                self.console.note(&format!(
                    "[ringmaster] attempt {attempt}: {} step {min_step}/{total}{pct} {}{rate}{gpus}",
                    first.phase,
                    loss.map(|l| format!("loss {l:.5} ")).unwrap_or_default(),
                ));
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some((nodes, total)) = self.bars.take() {
            for b in nodes {
                b.finish();
            }
            total.finish();
        }
        if let Some(b) = self.gpu_bar.take() {
            b.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu::telemetry::GpuSample;

    #[test]
    fn gpu_line_shows_what_nvml_gave_and_marks_what_it_did_not() {
        let g = |index, util, power, temp| GpuSample {
            index,
            name: "NVIDIA H200".into(),
            uuid: None,
            memory_used_mib: 40 * 1024 + 512,
            memory_total_mib: 143_771,
            utilization_gpu_pct: util,
            temperature_c: temp,
            power_w: power,
            sm_clock_mhz: None,
            nvlink_active: 0,
            pci_bus_id: None,
        };
        assert_eq!(
            gpu_line(&[
                g(0, Some(87), Some(451.4), Some(52)),
                g(1, None, None, None)
            ]),
            "gpu0 87% 40.5/140.4 GiB 451 W 52C | gpu1 ?% 40.5/140.4 GiB"
        );
        assert_eq!(gpu_line(&[]), "");
    }
}

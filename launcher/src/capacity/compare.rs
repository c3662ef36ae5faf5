//! `plan --compare`: shapes (an offer times a number of nodes) by
//! modelled cost per training step.

use super::*;
use serde::Serialize;

/// The work of one training step, for `plan --compare`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepWork {
    /// Over all GPUs, TFLOP.
    pub tflop: f64,
    /// All-reduced per step, GB.
    pub gradient_gb: f64,
}

/// One shape (an offer times a number of nodes) and its modelled step.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub cloud: String,
    pub region: String,
    pub instance_type: String,
    pub nodes: u32,
    pub gpus: u32,
    pub gpu: String,
    pub market: Buy,
    /// All nodes, USD per hour.
    pub price_per_hour: f64,
    pub compute_s: f64,
    pub allreduce_s: f64,
    pub step_s: f64,
    pub usd_per_1000_steps: f64,
}

/// The modelled time of one step on `nodes` nodes of offer `o`: compute at
/// `mfu` of the GPUs' peak BF16 rate, then a ring all-reduce of the
/// gradient (2(n-1)/n of it crosses the slowest link: NVLink/NVSwitch or
/// PCIe inside one node; between nodes the node's network, in GB/s), with no
/// overlap of the two. Deliberately simple, and documented as such.
pub fn model_step(o: &Offer, nodes: u32, work: StepWork, mfu: f64) -> (f64, f64) {
    let g = (nodes * o.gpus) as f64;
    let compute = work.tflop / (g * o.gpu_bf16_tflops * mfu);
    let bw = if nodes == 1 {
        o.interconnect.intra_gb_per_s
    } else {
        o.interconnect
            .intra_gb_per_s
            .min(o.interconnect.inter_gbit_per_s / 8.0)
    };
    let allreduce = if g > 1.0 {
        2.0 * (g - 1.0) / g * work.gradient_gb / bw
    } else {
        0.0
    };
    (compute, allreduce)
}

/// `plan --compare`: every shape of the offers that have the GPU model,
/// memory and region asked for and room for a data-parallel replica
/// (weights, gradient, momentum: 3 x the gradient) in each GPU's memory
/// (1..=max_nodes nodes of one offer; the interconnect requirement applies
/// to multi-node shapes), priced in the first market of the policy the
/// offer has, ranked by cost per step.
pub fn compare(cat: &Catalog, r: &Request, work: StepWork) -> Result<Vec<Shape>, String> {
    let c = &r.capacity;
    let mut shapes = Vec::new();
    for o in &cat.offers {
        for nodes in 1..=c.max_nodes {
            let probe = Request {
                nodes,
                gpus_per_node: o.gpus,
                gpu: r.gpu.clone(),
                capacity: c.clone(),
                now: r.now,
            };
            // Data parallel: every GPU holds weights, gradient and momentum
            // (3 x the gradient's size); shapes whose GPUs cannot are out.
            if misfit(o, &probe).is_some() || 3.0 * work.gradient_gb > o.gpu_memory_gb {
                continue;
            }
            let Some((market, price)) = markets(c.market)
                .iter()
                .find_map(|m| o.hourly(*m).map(|p| (*m, p)))
            else {
                continue;
            };
            let job_price = price * nodes as f64;
            if c.max_price_per_hour.is_some_and(|max| job_price > max) {
                continue;
            }
            let (compute, allreduce) = model_step(o, nodes, work, c.mfu);
            let step = compute + allreduce;
            shapes.push(Shape {
                cloud: o.cloud.clone(),
                region: o.region.clone(),
                instance_type: o.instance_type.clone(),
                nodes,
                gpus: nodes * o.gpus,
                gpu: o.gpu.clone(),
                market,
                price_per_hour: job_price,
                compute_s: compute,
                allreduce_s: allreduce,
                step_s: step,
                usd_per_1000_steps: job_price * step / 3600.0 * 1000.0,
            });
        }
    }
    if shapes.is_empty() {
        return Err(format!(
            "no offer has {}",
            Request {
                gpus_per_node: 0,
                ..r.clone()
            }
            .describe()
            .replacen("x 0 x ", "x any number of ", 1)
        ));
    }
    shapes.sort_by(|a, b| {
        a.usd_per_1000_steps
            .total_cmp(&b.usd_per_1000_steps)
            .then(a.step_s.total_cmp(&b.step_s))
    });
    Ok(shapes)
}

/// The compare table, for people.
pub fn human_compare(shapes: &[Shape], work: StepWork, mfu: f64, top: usize) -> String {
    let mut out = format!(
        "shapes by cost per step ({:.3} TFLOP and {:.3} GB of gradient per step, {:.0}% MFU, compute then ring all-reduce, no overlap; GPUs with room for 3x the gradient)\n",
        work.tflop,
        work.gradient_gb,
        mfu * 100.0
    );
    out.push_str(&format!(
        "{:>3}  {:<6} {:<30} {:>5} {:<6} {:<10} {:>9} {:>9} {:>10} {:>9} {:>12}\n",
        "#",
        "cloud",
        "shape",
        "GPUs",
        "GPU",
        "market",
        "$/h",
        "step s",
        "allreduce",
        "steps/h",
        "$/1000 steps"
    ));
    for (i, s) in shapes.iter().take(top).enumerate() {
        out.push_str(&format!(
            "{:>3}  {:<6} {:<30} {:>5} {:<6} {:<10} {:>9.2} {:>9.4} {:>10.4} {:>9.0} {:>12.3}\n",
            i + 1,
            s.cloud,
            format!("{} x {}", s.nodes, s.instance_type),
            s.gpus,
            s.gpu,
            s.market.name(),
            s.price_per_hour,
            s.step_s,
            s.allreduce_s,
            3600.0 / s.step_s,
            s.usd_per_1000_steps
        ));
    }
    if shapes.len() > top {
        out.push_str(&format!(
            "... {} more (--json lists all)\n",
            shapes.len() - top
        ));
    }
    let fastest = shapes
        .iter()
        .min_by(|a, b| a.step_s.total_cmp(&b.step_s))
        .expect("not empty");
    out.push_str(&format!(
        "cheapest per step: {} x {} ({}); fastest: {} x {} ({:.4} s per step)\n",
        shapes[0].nodes,
        shapes[0].instance_type,
        shapes[0].market.name(),
        fastest.nodes,
        fastest.instance_type,
        fastest.step_s
    ));
    out
}

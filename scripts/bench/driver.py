"""Runs ringmaster's benchmarks and their baselines in one run and prints
markdown tables with ratios (ringmaster vs baseline, measured now, here).
Results also go to .bench/results.json. See scripts/bench.sh."""
import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RM = os.path.join(ROOT, "target", "release", "ringmaster")
HERE = os.path.dirname(os.path.abspath(__file__))
WORK = tempfile.mkdtemp(prefix="ringmaster-bench-")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ringmaster(spec, extra=()):
    """Run a job; return its report."""
    run_id = f"b{time.time_ns()}"
    job = os.path.join(WORK, run_id + ".json")
    with open(job, "w") as f:
        json.dump(spec, f)
    r = subprocess.run([RM, "run", job, "-q", "--log-dir", os.path.join(WORK, "runs"), "--run-id", run_id, *extra],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        sys.exit(f"ringmaster failed ({r.returncode}): {r.stderr}\n{r.stdout}")
    with open(os.path.join(WORK, "runs", run_id, "report.json")) as f:
        return json.load(f)


def torchrun(py, nproc, script, args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, os.cpu_count() // nproc))))
    env.update(env_extra or {})
    cmd = [py, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), script, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if r.returncode != 0:
        sys.exit(f"torchrun failed: {r.stderr[-3000:]}")
    return r.stdout


def table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def f(x, d=3):
    return "-" if x is None else f"{x:.{d}f}"


def ratio(a, b, invert=False):
    if a is None or b is None or a == 0 or b == 0:
        return "-"
    return f"{(b / a) if invert else (a / b):.2f}x"


def bench_launch(py, sizes, repeats):
    rows, out = [], []
    for n in sizes:
        nodes = 2 if n >= 2 else 1
        spec = {"name": "ready", "resources": {"nodes": nodes, "devices_per_node": n // nodes},
                "workload": {"kind": "gemm", "m": 8, "n": 8, "k": 8, "iterations": 1, "warmup": 0}, "threads_per_worker": 1}
        native = statistics.median(ringmaster(spec)["attempts"][0]["launch_to_ready_s"] for _ in range(repeats))
        # The same Python program under both launchers: time from starting
        # the launcher until every rank has joined a gloo group.
        rm_py = tr_py = None
        if py:
            def via(launch):
                vals = []
                for _ in range(max(1, repeats // 2)):
                    d = tempfile.mkdtemp(dir=WORK)
                    t0 = time.time()
                    launch(d)
                    vals.append(max(float(open(os.path.join(d, x)).read()) for x in os.listdir(d)) - t0)
                return statistics.median(vals)
            script = os.path.join(HERE, "torch_ready.py")
            def rm_launch(d):
                s = {"name": "ready-py", "resources": {"nodes": 1, "devices_per_node": n},
                     "workload": {"kind": "command", "argv": [py, script, d]}, "threads_per_worker": 1,
                     "recovery": {"rendezvous_timeout_s": 300}}
                ringmaster(s)
            rm_py = via(rm_launch)
            tr_py = via(lambda d: torchrun(py, n, script, [d]))
        out.append({"workers": n, "ringmaster_native_s": native, "ringmaster_torch_script_s": rm_py, "torchrun_torch_script_s": tr_py})
        rows.append([str(n), f(native, 4), f(rm_py, 2), f(tr_py, 2), ratio(native, tr_py, invert=True), ratio(rm_py, tr_py, invert=True)])
    table("Launch to all ready (seconds, median)",
          ["workers", "ringmaster (own workers)", "ringmaster + torch script", "torchrun + torch script", "torchrun / ringmaster own", "torchrun / ringmaster, same script"], rows)
    return out


def bench_ring(py, ranks_list, sizes, iters):
    rows, out = [], []
    for ranks in ranks_list:
        spec = {"name": "ring", "resources": {"nodes": 2, "devices_per_node": ranks // 2},
                "workload": {"kind": "allreduce", "min_bytes": sizes[0], "max_bytes": sizes[-1], "step_factor": 4,
                             "iterations": iters, "warmup": 2, "check": True}}
        rep = ringmaster(spec)
        ring = {r["size_bytes"]: r for r in rep["summary"]["rows"]}
        gloo = {}
        if py:
            for line in torchrun(py, ranks, os.path.join(HERE, "gloo_allreduce.py"), [",".join(map(str, sizes)), str(iters), "2"]).splitlines():
                if line.startswith("{"):
                    j = json.loads(line)
                    gloo[j["bytes"]] = j
        for s in sizes:
            rb = ring[s]["ip_busbw_gbps"]
            gb = gloo.get(s, {}).get("busbw")
            out.append({"ranks": ranks, "bytes": s, "ring_busbw": rb, "ring_oop_busbw": ring[s]["oop_busbw_gbps"], "gloo_busbw": gb})
            rows.append([str(ranks), f"{s >> 20} MiB", f(rb), f(ring[s]["oop_busbw_gbps"]), f(gb), ratio(rb, gb)])
    table("All-reduce bus bandwidth, float32 (GB/s)", ["ranks", "size", "ring in-place", "ring out-of-place", "gloo", "ring / gloo"], rows)
    return out


def bench_gemm(py, sizes, iters):
    rows, out = [], []
    threads = os.cpu_count()
    npres = {}
    if py:
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        r = subprocess.run([py, os.path.join(HERE, "numpy_gemm.py"), ",".join(map(str, sizes)), str(iters)],
                           capture_output=True, text=True, timeout=900, env=env)
        for line in r.stdout.splitlines():
            j = json.loads(line)
            npres[j["n"]] = j
    for n in sizes:
        rep = ringmaster({"name": "gemm", "resources": {"nodes": 1, "devices_per_node": 1}, "threads_per_worker": threads,
                          "workload": {"kind": "gemm", "m": n, "n": n, "k": n, "iterations": iters, "warmup": 1}})
        g = rep["results"]["0"]["gflops_best"]
        npg = npres.get(n, {}).get("gflops")
        out.append({"n": n, "ringmaster_gflops": g, "numpy_gflops": npg, "numpy_blas": npres.get(n, {}).get("blas")})
        rows.append([str(n), str(threads), f(g, 1), f(npg, 1), ratio(g, npg)])
    table("GEMM float32, one worker (GFLOP/s, best)", ["n", "threads", "ringmaster (gemm crate)", "numpy", "ringmaster / numpy"], rows)
    if npres:
        print(f"\nnumpy BLAS: {next(iter(npres.values()))['blas']}")
    return out


def bench_train(py, steps):
    width, layers, batch, ranks = 1024, 3, 256, 2
    spec = {"name": "train", "resources": {"nodes": 2, "devices_per_node": 1},
            "workload": {"kind": "train", "steps": steps, "input_dim": width, "hidden": width, "layers": layers,
                         "output_dim": width, "batch_per_rank": batch, "lr": 0.01, "momentum": 0.9, "log_every": 1000}}
    rep = ringmaster(spec)
    rm = rep["summary"]["steps_per_s"]
    th = None
    if py:
        for line in torchrun(py, ranks, os.path.join(HERE, "torch_ddp_train.py"), [str(steps), str(width), str(layers), str(batch)]).splitlines():
            if line.startswith("{"):
                th = json.loads(line)["steps_per_s"]
    table(f"Data-parallel training: {layers}-layer MLP width {width} ({rep['summary']['params']} params), batch {batch}/rank, {ranks} ranks (steps/s)",
          ["ringmaster train", "torch DDP (gloo)", "ringmaster / torch"], [[f(rm, 2), f(th, 2), ratio(rm, th)]])
    return {"ringmaster_steps_per_s": rm, "torch_ddp_steps_per_s": th}


def bench_checkpoint(py, mib):
    d = tempfile.mkdtemp(dir=WORK)
    subprocess.run(["cargo", "build", "--release", "--locked", "--example", "ckpt_bench"], cwd=ROOT, check=True, capture_output=True)
    r = subprocess.run([os.path.join(ROOT, "target", "release", "examples", "ckpt_bench"), os.path.join(d, "ck"), str(mib), "1"],
                       capture_output=True, text=True, timeout=600, check=True)
    ours = json.loads(r.stdout)
    rows = [["ringmaster checkpoint (safetensors + CRC-32C, fsync, manifest, rename)", f(ours["write_gbps"], 2), "1.00x"]]
    out = {"ringmaster": ours, "baselines": []}
    if py:
        b = subprocess.run([py, os.path.join(HERE, "ckpt_baselines.py"), d, str(mib)], capture_output=True, text=True, timeout=600)
        for line in b.stdout.splitlines():
            j = json.loads(line)
            out["baselines"].append(j)
            rows.append([j["method"], f(j["gbps"], 2), ratio(ours["write_gbps"], j["gbps"])])
    table(f"Checkpoint write, {mib} MiB float32, fsync'd (GB/s; last column: ringmaster / this)", ["method", "GB/s", "ratio"], rows)
    print(f"\nverified load (CRC-32C of every shard): {ours['load_gbps']:.2f} GB/s")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-python", default="none")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--only", default="launch,ring,gemm,train,checkpoint")
    a = ap.parse_args()
    py = None if a.no_baselines or a.baseline_python == "none" else a.baseline_python
    only = a.only.split(",")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"## Benchmarks ({time.strftime('%Y-%m-%d')})\n\nMachine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; "
          f"baselines: {'torch ' + subprocess.run([py, '-c', 'import torch; print(torch.__version__)'], capture_output=True, text=True).stdout.strip() if py else 'none'}")
    results = {"machine": cpu, "cores": os.cpu_count()}
    if "launch" in only:
        results["launch"] = bench_launch(py, [2, 4, 8, 16], 3 if a.quick else 5)
    if "ring" in only:
        results["ring"] = bench_ring(py, [2, 4], [1 << 20, 4 << 20, 16 << 20, 64 << 20] + ([] if a.quick else [256 << 20]), 3 if a.quick else 5)
    if "gemm" in only:
        results["gemm"] = bench_gemm(py, [1024, 2048] + ([] if a.quick else [4096]), 3 if a.quick else 5)
    if "train" in only:
        results["train"] = bench_train(py, 10 if a.quick else 30)
    if "checkpoint" in only:
        results["checkpoint"] = bench_checkpoint(py, 256 if a.quick else 1024)
    os.makedirs(os.path.join(ROOT, ".bench"), exist_ok=True)
    with open(os.path.join(ROOT, ".bench", "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()

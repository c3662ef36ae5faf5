"""GPU check: ringmaster's GPU path against PyTorch on the same GPU, in one
run. See scripts/gpu-check.sh.

Built so a lent GPU's few minutes cannot be lost:
- `doctor` runs first; when it says GPU jobs cannot run here the check
  stops at once with its verdicts (nothing else could succeed);
- the steps run in order of value, each with its share of one global
  budget (BUDGET_S, written below): a slow step is cut at its share and
  recorded as failed, the rest still run;
- gpu-check.json is rewritten after every step, so whatever ends the
  check, every finished step is kept;
- every run's folder (logs with NCCL_DEBUG=WARN, events, report) is kept
  under $OUT/runs/<step>/ (checkpoints go to a scratch folder: they are
  large and the figures are in the reports).

`--dry-run` runs the same flow on a machine without a GPU (CI does): the
steps fail fast, and the check verifies every step recorded a result or
its failure and that the budget adds up.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("RINGMASTER_BIN_DIR", os.path.join(ROOT, "target", "release"))
RM = os.path.join(BIN, "ringmaster")
HERE = os.path.dirname(os.path.abspath(__file__))
# The whole check's budget and each step's share of it, in seconds, in the
# order the steps run (most valuable first). gpu-check.sh's outer timeout
# is BUDGET_S plus a margin for writing the results.
BUDGET_S = 300
SHARES = [
    ("doctor", 15),
    ("gemm_bf16_8192", 25),
    ("gemm_f32_4096", 10),
    ("gemm_tf32_8192", 15),
    ("nccl_1_rank", 25),
    ("train_gpu_vs_cpu", 80),
    ("nccl_2_ranks_one_gpu", 20),
    ("checkpoint_resume_gpu", 45),
    ("preemption_gpu", 50),
    ("metrics_gpu", 15),
]
results = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget_s": BUDGET_S,
           "shares_s": dict(SHARES), "steps": {}}
OUT = "gpu-check-out"
START = 0.0
# When the step in flight must end (monotonic seconds).
deadline = [float("inf")]


def save():
    """gpu-check.json, replaced atomically (a reader never sees half)."""
    path = os.path.join(OUT, "gpu-check.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)


def left():
    """Seconds the step in flight has left (at least 1)."""
    return max(1.0, deadline[0] - time.monotonic())


def step(name, fn):
    share = dict(SHARES)[name]
    t0 = time.monotonic()
    deadline[0] = min(t0 + share, START + BUDGET_S)
    try:
        if t0 >= START + BUDGET_S:
            raise TimeoutError("the check's budget is spent")
        val = fn()
        results["steps"][name] = {"ok": True, "seconds": round(time.monotonic() - t0, 1), "share_s": share, "result": val}
    except Exception as e:  # record and go on
        results["steps"][name] = {"ok": False, "seconds": round(time.monotonic() - t0, 1), "share_s": share,
                                  "error": f"{type(e).__name__}: {e}"[-2000:]}
        print(f"[gpu-check] {name} FAILED: {e}", flush=True)
    save()


def run_env(extra=None):
    env = dict(os.environ, RINGMASTER_PYTHON=sys.executable, NCCL_DEBUG="WARN")
    env.update(extra or {})
    return env


def rm_run(step_name, spec, events=None, env=None):
    """`ringmaster run` with its run folder under $OUT/runs/<step>/."""
    runs = os.path.join(OUT, "runs", step_name)
    os.makedirs(runs, exist_ok=True)
    run_id = f"r{len(os.listdir(runs))}"
    job = os.path.join(runs, f"{run_id}.json")
    with open(job, "w") as f:
        json.dump(spec, f)
    r = subprocess.run([RM, "run", job, "--log-dir", runs, "--run-id", run_id, "--tee", "-q"],
                       capture_output=True, text=True, timeout=left(), env=run_env(env))
    with open(os.path.join(runs, f"{run_id}.console.txt"), "w") as f:
        f.write(r.stdout + "\n--- stderr ---\n" + r.stderr)
    print(r.stdout[-2000:], flush=True)
    rep_path = os.path.join(runs, run_id, "report.json")
    if r.returncode != 0:
        raise RuntimeError(f"ringmaster exit {r.returncode}: {r.stderr[-1500:]}")
    if events is not None:
        with open(os.path.join(runs, run_id, "events.jsonl")) as f:
            events.extend(json.loads(l) for l in f if l.strip())
    with open(rep_path) as f:
        return json.load(f)


def doctor():
    r = subprocess.run([RM, "doctor", "--json"], capture_output=True, text=True, timeout=left(), env=run_env())
    human = subprocess.run([RM, "doctor"], capture_output=True, text=True, timeout=left(), env=run_env()).stdout
    print(human, flush=True)
    with open(os.path.join(OUT, "doctor.txt"), "w") as f:
        f.write(human)
    d = json.loads(r.stdout)
    # The libraries really loaded, by the launcher and by a worker under a
    # run's environment.
    results["libraries"] = {"located": d.get("located"), "worker_loads": d.get("worker_libs"),
                            "launcher_loads": {k: d["probe"][k].get("path") for k in ["driver", "cublas", "cublaslt", "nccl", "nvml"]}}
    out = {"gpus": d["gpus"], "probe": d["probe"], "verdicts": d["verdicts"], "gpu_ready": d["gpu_ready"]}
    if not d.get("gpu_ready"):
        errors = [v["what"] for v in d["verdicts"] if v["level"] == "error"]
        raise RuntimeError("doctor says GPU jobs are not possible here: " + "; ".join(errors))
    return out


def torch_matmul(n, dtype_name, iters=20):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
    dt = {"f32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
    a = torch.rand(n, n, device="cuda", dtype=dt) * 2 - 1
    b = torch.rand(n, n, device="cuda", dtype=dt) * 2 - 1
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        best = min(best, s.elapsed_time(e))
    return 2 * n**3 / (best * 1e-3) / 1e12


def gemm(dtype, n):
    rep = rm_run(f"gemm_{dtype}_{n}", {"name": f"gemm-{dtype}", "resources": {"nodes": 1, "devices_per_node": 1, "accelerator": "cuda"},
                  "workload": {"kind": "gemm", "m": n, "n": n, "k": n, "dtype": dtype, "iterations": 20, "warmup": 3}})
    rm_tflops = rep["results"]["0"]["gflops_best"] / 1e3
    th = torch_matmul(n, dtype)
    return {"n": n, "ringmaster_tflops": rm_tflops, "torch_tflops": th, "ratio": rm_tflops / th}


def nccl(ranks, sizes=(1 << 20, 16 << 20, 256 << 20), iterations=20):
    rep = rm_run(f"nccl_{ranks}", {"name": f"nccl{ranks}", "resources": {"nodes": 1, "devices_per_node": ranks, "accelerator": "cuda"},
                  "workload": {"kind": "allreduce", "min_bytes": sizes[0], "max_bytes": sizes[-1], "step_factor": 16, "iterations": iterations, "warmup": 3},
                  "collective": {"backend": "nccl", "timeout_s": 60}})
    rows = {r["size_bytes"]: r for r in rep["summary"]["rows"]}
    env = dict(os.environ, NCCL_MULTI_RANK_GPU_ENABLE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           os.path.join(HERE, "torch_nccl_allreduce.py"), ",".join(str(s) for s in sizes), str(iterations), "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=left(), env=env)
    if r.returncode != 0:
        raise RuntimeError("torch nccl: " + r.stderr[-1500:])
    torch_rows = {j["bytes"]: j for j in (json.loads(l) for l in r.stdout.splitlines() if l.startswith("{"))}
    out = []
    for s in sizes:
        rb, tb = rows[s]["oop_busbw_gbps"], torch_rows[s]["busbw"]
        out.append({"bytes": s, "ringmaster_busbw": rb, "torch_busbw": tb, "ratio": rb / tb if tb else None})
    return out


TRAIN = {"kind": "train", "input_dim": 1024, "hidden": 1024, "layers": 3, "output_dim": 1024,
         "batch_per_rank": 256, "lr": 0.01, "momentum": 0.9, "seed": 7, "log_every": 50}
TRAIN_STEPS = 100


def train_spec(name, accelerator, backend, steps, ckpt):
    return {"name": name, "resources": {"nodes": 1, "devices_per_node": 2, "accelerator": accelerator},
            "workload": dict(TRAIN, steps=steps), "threads_per_worker": 4,
            "collective": {"backend": backend, "timeout_s": 60},
            "checkpoint": {"dir": ckpt, "every_steps": steps, "keep": 2}}


def read_params(ckpt):
    """The newest checkpoint's params, concatenated from the ranks' shards
    (safetensors read by hand: 8-byte header length, JSON header, data)."""
    import array
    import struct
    newest = sorted(d for d in os.listdir(ckpt) if d.startswith("step-") and not d.endswith(".tmp"))[-1]
    folder = os.path.join(ckpt, newest)
    shards = sorted(f for f in os.listdir(folder) if f.endswith("-params.safetensors"))
    out = array.array("f")
    for f in shards:
        with open(os.path.join(folder, f), "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
            data = fh.read()
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            a, b = meta["data_offsets"]
            out.frombytes(data[a:b])
    return newest, out


def train_run(name, accelerator, backend, steps=TRAIN_STEPS, ckpt=None):
    ckpt = ckpt or tempfile.mkdtemp(prefix=f"ckpt-{name}-")
    events = []
    # TF32 pinned off: the GPU run is compared with the CPU's FP32.
    rep = rm_run(name, train_spec(name, accelerator, backend, steps, ckpt), events=events,
                 env={"NVIDIA_TF32_OVERRIDE": "0"})
    r0 = rep["results"]["0"]
    # The preflight check (on by default for GPU jobs): each rank's figures.
    pre = [e for e in events if e.get("event") == "preflight"]
    return {"steps_per_s": r0["steps_per_s"], "final_loss": r0["final_loss"], "first_loss": r0["first_loss"],
            "device": r0.get("device"), "sha256": r0["weights_sha256"], "ckpt": ckpt,
            "seconds_per_step": r0.get("seconds_per_step"),
            "preflight": pre[0]["figures"] if pre else None}


def torch_train_gpu(steps=TRAIN_STEPS):
    env = dict(os.environ, NCCL_MULTI_RANK_GPU_ENABLE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           os.path.join(ROOT, "scripts", "bench", "torch_ddp_train.py"), str(steps), "1024", "3", "256", "cuda"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=left(), env=env)
    if r.returncode != 0:
        raise RuntimeError("torch train: " + r.stderr[-1500:])
    return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")][0]


def train_gpu_vs_cpu():
    # The GPU run first: when it cannot run, the CPU run is not paid for.
    gpus = {"nccl": train_run("train-gpu-nccl", "cuda", "nccl")}
    cpu = train_run("train-cpu", "cpu", "tcp")
    gpus["tcp"] = train_run("train-gpu-tcp", "cuda", "tcp")
    out = {"cpu": cpu}
    for backend, g in gpus.items():
        _, wc = read_params(cpu["ckpt"])
        _, wg = read_params(g["ckpt"])
        if len(wc) != len(wg):
            raise RuntimeError(f"{len(wc)} CPU params vs {len(wg)} GPU params")
        diff = max(abs(a - b) for a, b in zip(wc, wg))
        scale = max(abs(a) for a in wc)
        g["max_abs_weight_diff"] = diff
        g["max_weight"] = scale
        g["loss_rel_diff"] = abs(g["final_loss"] - cpu["final_loss"]) / abs(cpu["final_loss"])
        # FP32 everywhere, different summation orders: agreement to ~1e-4
        # of the largest weight after 100 steps is expected.
        g["agrees"] = diff <= 1e-3 * scale and g["loss_rel_diff"] <= 1e-3
        out[f"gpu_{backend}"] = g
    try:
        out["torch_ddp_gpu"] = torch_train_gpu()
    except Exception as e:  # the comparison is optional
        out["torch_ddp_gpu"] = {"error": str(e)[-500:]}
    results["train_nccl_sha256"] = out["gpu_nccl"]["sha256"]
    return out


def checkpoint_resume_gpu():
    """Half the steps, then the rest from the checkpoint (written from device
    memory, read back into it): the same weights as the uninterrupted run."""
    ckpt = tempfile.mkdtemp(prefix="ckpt-resume-")
    first = train_run("resume-a", "cuda", "nccl", steps=TRAIN_STEPS // 2, ckpt=ckpt)
    second = train_run("resume-b", "cuda", "nccl", steps=TRAIN_STEPS, ckpt=ckpt)
    want = results.get("train_nccl_sha256")
    return {"first_half_sha256": first["sha256"], "resumed_sha256": second["sha256"],
            "uninterrupted_sha256": want, "bit_identical": want is not None and second["sha256"] == want}


def preemption_gpu():
    """A spot preemption on GPUs (provider sim, 2 nodes x 1 GPU worker on the
    one GPU): node 1 is preempted mid-run, the survivor keeps its state and
    rejoins with the replacement on a new NCCL communicator (1000 paced
    steps, about 5 s; the notice 4 s in); the final
    weights must equal the same run without the preemption."""
    def spec(preemptions, ckpt):
        s = {"name": "spot-gpu", "resources": {"nodes": 2, "devices_per_node": 1, "accelerator": "cuda"},
             "workload": dict(TRAIN, steps=1000, pace_ms=5), "threads_per_worker": 4,
             "collective": {"backend": "nccl", "timeout_s": 60},
             "checkpoint": {"dir": ckpt, "every_steps": 100, "keep": 2},
             "recovery": {"heartbeat_interval_s": 0.2, "grace_period_s": 5},
             "provider": {"kind": "sim", "cloud": "aws", "provisioning_delay_s": 0.3, "notice_window_s": 10,
                          "preemptions": preemptions}}
        return s
    clean = rm_run("preemption_clean", spec([], tempfile.mkdtemp(prefix="ckpt-spot-clean-")))
    events = []
    hit = rm_run("preemption_hit", spec([{"node": 1, "at_s": 4.0}], tempfile.mkdtemp(prefix="ckpt-spot-")), events=events)
    kept = [e for e in events if e.get("event") == "survivors_kept"]
    want, got = clean["summary"]["weights_sha256"], hit["summary"]["weights_sha256"]
    return {"restarts_by_kind": hit["restarts_by_kind"], "survivors_kept": kept[0]["ranks"] if kept else None,
            "preemptions": hit.get("preemptions"), "weights_equal": want == got, "sha256": got}


def metrics_gpu():
    """The launcher's /metrics during a GPU train run: the node's GPU series
    (from its worker's NVML samples) under ringmaster's and dcgm-exporter's
    names, scraped once a second; utilisation must be above 0 in one."""
    import urllib.request
    runs = os.path.join(OUT, "runs", "metrics_gpu")
    os.makedirs(runs, exist_ok=True)
    spec = {"name": "metrics-gpu", "resources": {"nodes": 1, "devices_per_node": 1, "accelerator": "cuda"},
            "workload": dict(TRAIN, steps=2000, pace_ms=2), "threads_per_worker": 4,
            "observability": {"metrics_addr": "127.0.0.1:0"}}
    job = os.path.join(runs, "m.json")
    with open(job, "w") as f:
        json.dump(spec, f)
    p = subprocess.Popen([RM, "run", job, "--log-dir", runs, "--run-id", "m", "-q"], env=run_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr, scrapes = None, []
    try:
        while p.poll() is None and time.monotonic() < deadline[0] - 1:
            if addr is None:
                try:
                    with open(os.path.join(runs, "m", "events.jsonl")) as f:
                        text = f.read()
                    for l in text[: text.rfind("\n") + 1].splitlines():
                        e = json.loads(l)
                        if e.get("event") == "metrics_listening":
                            addr = e["addr"]
                except OSError:
                    pass
            else:
                try:
                    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=2).read().decode()
                    scrapes.append([l for l in text.splitlines()
                                    if l.startswith(("DCGM_FI_DEV_", "ringmaster_gpu_", "nvidia_gpu_"))])
                except OSError:
                    pass
            time.sleep(1)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    util = [float(l.rsplit(" ", 1)[1]) for s in scrapes for l in s if l.startswith("DCGM_FI_DEV_GPU_UTIL{")]
    with open(os.path.join(OUT, "metrics-gpu.txt"), "w") as f:
        f.write("\n\n".join("\n".join(s) for s in scrapes))
    return {"addr": addr, "scrapes": len(scrapes), "gpu_series": len(scrapes[-1]) if scrapes else 0,
            "dcgm_util_max": max(util) if util else None, "util_above_zero": bool(util) and max(util) > 0,
            "last": scrapes[-1][:20] if scrapes else []}


STEPS = {
    "doctor": doctor,
    "gemm_bf16_8192": lambda: gemm("bf16", 8192),
    "gemm_f32_4096": lambda: gemm("f32", 4096),
    "gemm_tf32_8192": lambda: gemm("tf32", 8192),
    "nccl_1_rank": lambda: nccl(1),
    "train_gpu_vs_cpu": lambda: train_gpu_vs_cpu(),
    # Two ranks on one GPU take turns without MPS: small sizes, few rounds.
    "nccl_2_ranks_one_gpu": lambda: nccl(2, sizes=(1 << 20, 16 << 20), iterations=5),
    "checkpoint_resume_gpu": lambda: checkpoint_resume_gpu(),
    "preemption_gpu": lambda: preemption_gpu(),
    "metrics_gpu": lambda: metrics_gpu(),
}


def main():
    global OUT, START
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu-check-out")
    ap.add_argument("--dry-run", action="store_true",
                    help="the same flow without a GPU: every step fails fast; checks each one is recorded and the budget adds up")
    a = ap.parse_args()
    OUT = a.out
    os.makedirs(OUT, exist_ok=True)
    START = time.monotonic()
    results["dry_run"] = a.dry_run
    assert [n for n, _ in SHARES] == list(STEPS), "every step has a share, in order"
    results["budget_ok"] = sum(s for _, s in SHARES) <= BUDGET_S
    save()
    for name, _ in SHARES:
        step(name, STEPS[name])
        if name == "doctor" and not results["steps"]["doctor"]["ok"] and not a.dry_run:
            results["stopped"] = "doctor: " + results["steps"]["doctor"]["error"]
            print(f"[gpu-check] stopping: {results['stopped']}", flush=True)
            save()
            return 1
    results["finished_s"] = round(time.monotonic() - START, 1)
    results["not_implemented"] = []
    save()
    if a.dry_run:
        missing = [n for n, _ in SHARES if n not in results["steps"]]
        ok = not missing and results["budget_ok"]
        print(f"[gpu-check] dry run: {len(results['steps'])}/{len(SHARES)} steps recorded, "
              f"shares {sum(s for _, s in SHARES)} s of a {BUDGET_S} s budget: {'ok' if ok else 'NOT OK'}"
              + (f"; missing {missing}" if missing else ""), flush=True)
        return 0 if ok else 1
    print("\n| check | ringmaster | torch | ratio |\n|---|---|---|---|")
    for name, st in results["steps"].items():
        if not st["ok"]:
            print(f"| {name} | FAILED | | |")
            continue
        v = st["result"]
        if name.startswith("gemm"):
            print(f"| {name} | {v['ringmaster_tflops']:.1f} TFLOP/s | {v['torch_tflops']:.1f} TFLOP/s | {v['ratio']:.3f} |")
        elif name.startswith("nccl"):
            for row in v:
                print(f"| {name} {row['bytes'] >> 20} MiB | {row['ringmaster_busbw']:.1f} GB/s | {row['torch_busbw']:.1f} GB/s | {row['ratio']:.3f} |")
        elif name == "train_gpu_vs_cpu":
            c = v["cpu"]
            t = v.get("torch_ddp_gpu", {})
            for b in ["nccl", "tcp"]:
                g = v[f"gpu_{b}"]
                ratio = f"{g['steps_per_s'] / t['steps_per_s']:.3f}" if "steps_per_s" in t else ""
                print(f"| train GPU ({b}) steps/s | {g['steps_per_s']:.1f} | {t.get('steps_per_s', float('nan')):.1f} (DDP) | {ratio} |")
                print(f"| train GPU ({b}) vs CPU: loss {g['final_loss']:.6f} vs {c['final_loss']:.6f}, max |dw| {g['max_abs_weight_diff']:.2e} | agrees: {g['agrees']} | | |")
                for rank, f in sorted((g.get("preflight") or {}).items()):
                    print(f"| preflight rank {rank} ({b} run) | GEMM bf16 {f['gemm_gflops'] / 1e3:.1f} TFLOP/s, H2D {f['copy_gbps']:.1f} GB/s | | |")
        elif name == "preemption_gpu":
            print(f"| spot preemption on GPUs, survivors kept {v['survivors_kept']} | weights equal: {v['weights_equal']} | | |")
        elif name == "checkpoint_resume_gpu":
            print(f"| checkpoint from device memory, resume | bit-identical: {v['bit_identical']} | | |")
        else:
            print(f"| {name} | ok | | |")
    for x in results["not_implemented"]:
        print(f"| {x} | not implemented | | |")


    return 0


if __name__ == "__main__":
    sys.exit(main())

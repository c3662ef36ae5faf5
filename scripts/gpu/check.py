"""GPU check: ringmaster's GPU path against PyTorch on the same GPU, in one
run. See scripts/gpu-check.sh. Each step is bounded and recorded; a step
that fails is recorded as failed and the rest still run."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RM = os.path.join(ROOT, "target", "release", "ringmaster")
HERE = os.path.dirname(os.path.abspath(__file__))
results = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": {}}


def step(name, fn):
    t0 = time.time()
    try:
        val = fn()
        results["steps"][name] = {"ok": True, "seconds": round(time.time() - t0, 1), "result": val}
    except Exception as e:  # record and go on
        results["steps"][name] = {"ok": False, "seconds": round(time.time() - t0, 1), "error": str(e)[-2000:]}
        print(f"[gpu-check] {name} FAILED: {e}", flush=True)


def rm_run(spec, timeout=240):
    work = tempfile.mkdtemp(prefix="gpucheck-")
    job = os.path.join(work, "job.json")
    with open(job, "w") as f:
        json.dump(spec, f)
    r = subprocess.run([RM, "run", job, "--log-dir", os.path.join(work, "runs"), "--run-id", "r", "--tee", "-q"],
                       capture_output=True, text=True, timeout=timeout, env=dict(os.environ, RINGMASTER_PYTHON=sys.executable))
    print(r.stdout[-3000:], flush=True)
    rep_path = os.path.join(work, "runs", "r", "report.json")
    if r.returncode != 0:
        raise RuntimeError(f"ringmaster exit {r.returncode}: {r.stderr[-1500:]}")
    with open(rep_path) as f:
        return json.load(f)


def doctor():
    r = subprocess.run([RM, "doctor", "--json"], capture_output=True, text=True, timeout=60, env=dict(os.environ, RINGMASTER_PYTHON=sys.executable))
    print(subprocess.run([RM, "doctor"], capture_output=True, text=True, timeout=60, env=dict(os.environ, RINGMASTER_PYTHON=sys.executable)).stdout, flush=True)
    d = json.loads(r.stdout)
    if not d.get("gpu_ready"):
        raise RuntimeError("doctor says GPU jobs are not possible here")
    return {"gpus": d["gpus"], "probe": d["probe"], "verdicts": d["verdicts"]}


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
    rep = rm_run({"name": f"gemm-{dtype}", "resources": {"nodes": 1, "devices_per_node": 1, "accelerator": "cuda"},
                  "workload": {"kind": "gemm", "m": n, "n": n, "k": n, "dtype": dtype, "iterations": 20, "warmup": 3}})
    rm_tflops = rep["results"]["0"]["gflops_best"] / 1e3
    th = torch_matmul(n, dtype)
    return {"n": n, "ringmaster_tflops": rm_tflops, "torch_tflops": th, "ratio": rm_tflops / th}


def nccl(ranks, sizes=(1 << 20, 16 << 20, 256 << 20)):
    rep = rm_run({"name": f"nccl{ranks}", "resources": {"nodes": 1, "devices_per_node": ranks, "accelerator": "cuda"},
                  "workload": {"kind": "allreduce", "min_bytes": sizes[0], "max_bytes": sizes[-1], "step_factor": 16, "iterations": 20, "warmup": 5},
                  "collective": {"backend": "nccl", "timeout_s": 120}})
    rows = {r["size_bytes"]: r for r in rep["summary"]["rows"]}
    env = dict(os.environ, NCCL_MULTI_RANK_GPU_ENABLE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           os.path.join(HERE, "torch_nccl_allreduce.py"), ",".join(str(s) for s in sizes), "20", "5"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    if r.returncode != 0:
        raise RuntimeError("torch nccl: " + r.stderr[-1500:])
    torch_rows = {j["bytes"]: j for j in (json.loads(l) for l in r.stdout.splitlines() if l.startswith("{"))}
    out = []
    for s in sizes:
        rb, tb = rows[s]["oop_busbw_gbps"], torch_rows[s]["busbw"]
        out.append({"bytes": s, "ringmaster_busbw": rb, "torch_busbw": tb, "ratio": rb / tb if tb else None})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu-check-out")
    a = ap.parse_args()
    step("doctor", doctor)
    for dtype in ["f32", "tf32", "bf16"]:
        step(f"gemm_{dtype}_8192", lambda d=dtype: gemm(d, 8192))
    step("nccl_1_rank", lambda: nccl(1))
    step("nccl_2_ranks_one_gpu", lambda: nccl(2))
    results["not_implemented"] = ["train on the GPU (issue 5)", "checkpoint save/restore from device memory (issues 3 and 5)"]
    with open(os.path.join(a.out, "gpu-check.json"), "w") as f:
        json.dump(results, f, indent=1)
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
        else:
            print(f"| {name} | ok | | |")
    for x in results["not_implemented"]:
        print(f"| {x} | not implemented | | |")


if __name__ == "__main__":
    main()

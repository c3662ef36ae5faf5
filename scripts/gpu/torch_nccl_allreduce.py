"""Baseline for the NCCL sweep: torch.distributed all_reduce on nccl,
float32, out of place semantics as nccl-tests (timed with CUDA events).
Rank 0 prints one JSON line per size."""
import json
import os
import sys

import torch
import torch.distributed as dist

local = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(local % torch.cuda.device_count())
dist.init_process_group("nccl")
n = dist.get_world_size()
sizes = [int(s) for s in sys.argv[1].split(",")]
iters, warm = int(sys.argv[2]), int(sys.argv[3])
for size in sizes:
    x = torch.ones(size // 4, dtype=torch.float32, device="cuda")
    for _ in range(warm):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        dist.all_reduce(x)
    e.record()
    e.synchronize()
    dt = s.elapsed_time(e) * 1e-3 / iters
    alg = size / dt / 1e9
    if dist.get_rank() == 0:
        print(json.dumps({"bytes": size, "time_us": dt * 1e6, "algbw": alg, "busbw": alg * 2 * (n - 1) / n if n > 1 else alg}), flush=True)
dist.destroy_process_group()

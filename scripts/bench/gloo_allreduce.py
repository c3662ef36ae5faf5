"""Baseline for the ring: torch.distributed all_reduce on gloo, float32,
timed like nccl-tests (warm-up, then the mean of `iters` runs, in place).
Rank 0 prints one JSON line per size: bytes, time_us, algbw, busbw (GB/s)."""
import json
import os
import sys
import time

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
n = dist.get_world_size()
sizes = [int(s) for s in sys.argv[1].split(",")]
iters, warm = int(sys.argv[2]), int(sys.argv[3])
for size in sizes:
    x = torch.ones(size // 4, dtype=torch.float32)
    for _ in range(warm):
        dist.all_reduce(x)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(x)
    dt = (time.perf_counter() - t0) / iters
    alg = size / dt / 1e9
    if dist.get_rank() == 0:
        print(json.dumps({"bytes": size, "time_us": dt * 1e6, "algbw": alg, "busbw": alg * 2 * (n - 1) / n}), flush=True)
dist.destroy_process_group()

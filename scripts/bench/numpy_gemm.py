"""Baseline for GEMM: numpy float32 matmul, best of `iters` after warm-up.
Prints one JSON line per size with GFLOP/s and the BLAS numpy uses."""
import json
import sys
import time

import numpy as np

try:
    from threadpoolctl import threadpool_info
    blas = [(i.get("internal_api"), i.get("architecture"), i.get("num_threads")) for i in threadpool_info()]
except Exception:  # threadpoolctl is optional
    blas = []
iters = int(sys.argv[2])
for n in [int(s) for s in sys.argv[1].split(",")]:
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    a @ b
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"n": n, "gflops": 2 * n**3 / best / 1e9, "blas": blas}), flush=True)

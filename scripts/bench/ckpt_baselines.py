"""Baselines for checkpoint writes of `mib` MiB of float32, each followed by
fsync: dd-like raw write, Python safetensors save_file, torch.save.
Prints one JSON line per method with GB/s, best of two rounds (as
ckpt_bench does)."""
import json
import os
import sys
import time

import numpy as np

d, mib = sys.argv[1], int(sys.argv[2])
arr = (np.arange(mib * (1 << 18), dtype=np.float32) % 1000) * 0.001
gb = mib * (1 << 20) / 1e9


def timed(name, fn, path):
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        fn(path)
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        best = min(best, time.perf_counter() - t0)
        os.remove(path)
    print(json.dumps({"method": name, "seconds": best, "gbps": gb / best}), flush=True)


def raw(path):
    with open(path, "wb") as f:
        f.write(arr.tobytes())


timed("raw write + fsync (dd-like)", raw, os.path.join(d, "raw.bin"))
try:
    from safetensors.numpy import save_file
    timed("python safetensors + fsync", lambda p: save_file({"w": arr}, p), os.path.join(d, "st.safetensors"))
except ImportError:
    pass
try:
    import torch
    t = torch.from_numpy(arr)
    timed("torch.save + fsync", lambda p: torch.save({"w": t}, p), os.path.join(d, "t.pt"))
except ImportError:
    pass

"""Baseline for launch-to-ready: how long until every rank has joined a
gloo process group. Writes <out>/ready-<rank> with the wall time."""
import os
import sys
import time

import torch.distributed as dist

dist.init_process_group("gloo")
dist.barrier()
t = time.time()
with open(os.path.join(sys.argv[1], f"ready-{dist.get_rank()}"), "w") as f:
    f.write(repr(t))
dist.destroy_process_group()

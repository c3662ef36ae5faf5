"""Baseline for `train`: the same model and step under torch DDP, on gloo
and the CPU (scripts/bench.sh) or, with a fifth argument `cuda`, on NCCL
and the GPU (scripts/gpu/check.py). MLP of `layers` Linear layers of width
`width` with ReLU between, float32, batch per rank, MSE loss, SGD with
momentum. Rank 0 prints steps/s (after one warm-up step)."""
import os
import json
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

steps, width, layers, batch = (int(a) for a in sys.argv[1:5])
cuda = len(sys.argv) > 5 and sys.argv[5] == "cuda"
dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()) if cuda else torch.device("cpu")
if cuda:
    torch.cuda.set_device(dev)
    # Same arithmetic as ringmaster's device MLP: FP32 GEMMs, no TF32.
    torch.backends.cuda.matmul.allow_tf32 = False
dist.init_process_group("nccl" if cuda else "gloo")
torch.manual_seed(0)
mods = []
for i in range(layers):
    mods.append(nn.Linear(width, width))
    if i + 1 < layers:
        mods.append(nn.ReLU())
model = nn.parallel.DistributedDataParallel(nn.Sequential(*mods).to(dev))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
teacher = (torch.randn(width, width) / width**0.5).to(dev)
g = torch.Generator(device=dev).manual_seed(dist.get_rank())
t0 = None
for step in range(steps + 1):
    if step == 1:
        t0 = time.perf_counter()
    x = torch.rand(batch, width, generator=g, device=dev) * 2 - 1
    y = torch.tanh(x @ teacher)
    loss = 0.5 * nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
if cuda:
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
if dist.get_rank() == 0:
    print(json.dumps({"steps_per_s": steps / dt, "loss": loss.item(), "threads": torch.get_num_threads()}), flush=True)
dist.destroy_process_group()

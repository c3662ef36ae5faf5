"""examples/ddp_train.py with torch.distributed.checkpoint (DCP) instead of
torch.save: every rank writes its part of the checkpoint into the one folder
`ringmaster.checkpoint_dir(step)` gives (DCP's layout: `__<rank>_0.distcp`
files and rank 0's `.metadata`), then commits; ringmaster lists and
checksums them all and commits the folder once every rank has. As there: it stops at
the step every rank agrees on when a preemption notice comes, and resumes
from the newest committed checkpoint when restarted (after a failure, a
replacement node, `ringmaster run --resume`, a Slurm requeue). It runs
unchanged under torchrun or plain `python` (world 1): without ringmaster
the `ringmaster` calls do nothing and return sane values.

    ringmaster run examples/ddp_dcp.json            # 2 nodes x 2 workers
    kill -USR1 <launcher pid>                       # stops at one step, exit 8
    ringmaster run --resume runs/<run id>           # same final model

What the script does for ringmaster (six lines): `ringmaster.resume()` at
start, `ringmaster.report(...)` once per step, and at a checkpoint
`ringmaster.checkpoint_dir(step)` + `ringmaster.commit(step)`.

Environment: STEPS (default 300); STEP_S: seconds to sleep in each step (a
stand-in for a bigger model); FINAL_OUT: a file rank 0 writes the final
weights' SHA-256 into. Deterministic on the CPU: the same final weights
whether the run was interrupted or not.
"""
import hashlib
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import ringmaster

STEPS = int(os.environ.get("STEPS", "300"))
STEP_S = float(os.environ.get("STEP_S", "0"))
BATCH = 32

# Plain `python` (no launcher): a world of one.
for k, v in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29513"), ("RANK", "0"), ("WORLD_SIZE", "1")):
    os.environ.setdefault(k, v)

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
dist.init_process_group("gloo")  # env:// from MASTER_ADDR/MASTER_PORT
rank, world = dist.get_rank(), dist.get_world_size()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
ddp = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
teacher = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
loss_fn = nn.MSELoss()


def batch(step):
    """Rank `rank`'s batch for `step`: a function of (step, rank) only, so
    an interrupted run sees the same data as an uninterrupted one."""
    g = torch.Generator().manual_seed(step * 1000 + rank)
    x = torch.randn(BATCH, 16, generator=g)
    return x, torch.tanh(x @ teacher)


def save(step):
    """Every rank writes its part (DCP saves each replicated tensor once)
    and commits it."""
    model_sd, optim_sd = get_state_dict(ddp, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=ringmaster.checkpoint_dir(step))
    ringmaster.commit(step)


start = 0
found = ringmaster.resume()
if found:
    start, folder = found
    model_sd, optim_sd = get_state_dict(ddp, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(ddp, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    print(f"rank {rank}: resumed at step {start}", flush=True)

# DDP lays its gradient buckets out anew after the first backward pass. One
# pass that changes nothing (no optimizer step) does that before the first
# real step, so a resumed run reduces the gradients in the same order as an
# uninterrupted one: bit-exact results.
x, y = batch(0)
loss_fn(ddp(x), y).backward()
opt.zero_grad(set_to_none=True)

for step in range(start, STEPS):
    x, y = batch(step)
    opt.zero_grad()
    loss = loss_fn(ddp(x), y)
    loss.backward()
    opt.step()
    time.sleep(STEP_S)
    done = step + 1
    if ringmaster.report(done, loss=loss.item(), samples=BATCH, total=STEPS):
        # The agreed stop step: every rank is here; save and stop.
        save(done)
        print(f"rank {rank}: stopped at the agreed step {done}, checkpoint saved", flush=True)
        dist.destroy_process_group()
        sys.exit(0)
    if ringmaster.checkpoint_due(done):
        save(done)

if rank == 0:
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().contiguous().numpy().tobytes())
    print(f"final weights sha256 {digest.hexdigest()}", flush=True)
    if os.environ.get("FINAL_OUT"):
        with open(os.environ["FINAL_OUT"], "w") as f:
            f.write(digest.hexdigest())
dist.destroy_process_group()

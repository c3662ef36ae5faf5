"""A PyTorch DDP training script for ringmaster's `command` workload, with
its own torch.save checkpoints, that stops at the step every rank agrees on
when a preemption notice comes and resumes from its checkpoint when run
again. It also runs unchanged under torchrun or plain `python` (world 1):
without ringmaster, `ringmaster.report` does nothing and returns False.

    ringmaster run examples/ddp_train.json          # 2 nodes x 2 workers
    kill -USR1 <launcher pid>                       # stops at one step, exit 8
    ringmaster run examples/ddp_train.json          # resumes, same final model

Environment: CKPT_DIR (default ./ddp-ckpt), STEPS (default 300), SAVE_EVERY
(default 50). Deterministic on the CPU: the same final weights whether the
run was interrupted or not (rank 0 prints their SHA-256 at the end).
"""
import hashlib
import io
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

import ringmaster

STEPS = int(os.environ.get("STEPS", "300"))
SAVE_EVERY = int(os.environ.get("SAVE_EVERY", "50"))
CKPT_DIR = os.environ.get("CKPT_DIR", "ddp-ckpt")
BATCH = 32

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
dist.init_process_group("gloo")  # env:// from MASTER_ADDR/MASTER_PORT
rank, world = dist.get_rank(), dist.get_world_size()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
ddp = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
teacher = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))


def batch(step):
    """Rank `rank`'s batch for `step`: a function of (step, rank) only, so
    an interrupted run sees the same data as an uninterrupted one."""
    g = torch.Generator().manual_seed(step * 1000 + rank)
    x = torch.randn(BATCH, 16, generator=g)
    return x, torch.tanh(x @ teacher)


def save(step):
    """Rank 0 writes the state after `step` (model, optimizer, step) and
    moves it into place only once it is whole."""
    if rank == 0:
        os.makedirs(CKPT_DIR, exist_ok=True)
        tmp = os.path.join(CKPT_DIR, "latest.pt.tmp")
        torch.save({"step": step, "model": model.state_dict(), "opt": opt.state_dict()}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(CKPT_DIR, "latest.pt"))
    dist.barrier()


start = 0
path = os.path.join(CKPT_DIR, "latest.pt")
if os.path.exists(path):
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    start = state["step"]
    print(f"rank {rank}: resumed at step {start}", flush=True)

loss_fn = nn.MSELoss()
for step in range(start, STEPS):
    x, y = batch(step)
    opt.zero_grad()
    loss = loss_fn(ddp(x), y)
    loss.backward()
    opt.step()
    done = step + 1
    if ringmaster.report(done, loss=loss.item(), samples=BATCH, total=STEPS):
        # The agreed stop step: every rank is here; save and stop.
        save(done)
        print(f"rank {rank}: stopped at the agreed step {done}, checkpoint saved", flush=True)
        dist.destroy_process_group()
        sys.exit(0)
    if done % SAVE_EVERY == 0:
        save(done)

if rank == 0:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    print(f"final weights sha256 {hashlib.sha256(buf.getvalue()).hexdigest()}", flush=True)
dist.destroy_process_group()

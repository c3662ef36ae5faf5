"""A PyTorch DDP training script with no ringmaster import: it stops on a
signal, as scripts written for torchrun do, and runs the same under
ringmaster's signal mode (`notices.program_signal`, SIGTERM by default),
torchrun, or plain `python`.

The signal only sets a flag. Ranks are told at slightly different moments,
so at each step's end they agree with one small all-reduce of the flag
(MAX): every rank stops after the same step, rank 0 saves the model there
(the replicas are identical) and all exit 0. Under ringmaster the notice's
details are in the file named by RINGMASTER_NOTICE_FILE (the deadline);
this script does not need them.

    ringmaster run examples/ddp_signal.json         # 2 nodes x 2 workers
    kill -TERM <launcher pid>                       # a notice: stops, exit 8
    torchrun --nproc-per-node 4 examples/ddp_signal.py
    kill -TERM <torchrun pid>                       # torchrun forwards it

It resumes from CKPT (default ./ddp-signal.pt) when that file exists.
Environment: STEPS (default 300), STEP_S (seconds to sleep per step),
NOTICE_SIG (default SIGTERM), CKPT, STOPPED_OUT (a folder where each rank
writes the step it stopped after).
"""
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn

STEPS = int(os.environ.get("STEPS", "300"))
STEP_S = float(os.environ.get("STEP_S", "0"))
CKPT = os.environ.get("CKPT", "ddp-signal.pt")
BATCH = 32
for k, v in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29512"), ("RANK", "0"), ("WORLD_SIZE", "1")):
    os.environ.setdefault(k, v)

told = False


def on_signal(signum, frame):
    global told
    told = True


signal.signal(getattr(signal, os.environ.get("NOTICE_SIG", "SIGTERM")), on_signal)

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
ddp = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
teacher = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
loss_fn = nn.MSELoss()

start = 0
if os.path.exists(CKPT):
    state = torch.load(CKPT, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    start = state["step"]
    print(f"rank {rank}: resumed at step {start}", flush=True)

for step in range(start, STEPS):
    g = torch.Generator().manual_seed(step * 1000 + rank)
    x = torch.randn(BATCH, 16, generator=g)
    opt.zero_grad()
    loss = loss_fn(ddp(x), torch.tanh(x @ teacher))
    loss.backward()
    opt.step()
    time.sleep(STEP_S)
    if rank == 0 and (step + 1) % 50 == 0:
        print(f"step {step + 1}", flush=True)
    flag = torch.tensor([1.0 if told else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0:
        done = step + 1
        if rank == 0:
            tmp = CKPT + ".tmp"
            torch.save({"step": done, "model": model.state_dict(), "opt": opt.state_dict()}, tmp)
            os.replace(tmp, CKPT)
        dist.barrier()
        if os.environ.get("STOPPED_OUT"):
            with open(os.path.join(os.environ["STOPPED_OUT"], f"stopped-{rank}"), "w") as f:
                f.write(str(done))
        print(f"rank {rank}: told, stopped after step {done}", flush=True)
        dist.destroy_process_group()
        sys.exit(0)
print(f"rank {rank}: done at step {STEPS}", flush=True)
dist.destroy_process_group()

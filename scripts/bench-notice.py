"""Notice -> every rank out with the checkpoint committed, for a PyTorch DDP
script (gloo, 4 ranks, CPU), side by side in one run:

  ringmaster, package  examples/ddp_train.py: the agreed stop step, the
                       checkpoint committed by the launcher (SIGUSR1)
  ringmaster, signal   examples/ddp_signal.py, no import: SIGTERM to the
                       launcher is the notice, the program gets SIGTERM
  torchrun             examples/ddp_signal.py under torchrun, SIGTERM to
                       torchrun (it forwards SIGTERM, SIGKILLs after 30 s)

and resume -> first step against a fresh start -> first step (both include
starting Python and importing torch). Needs a venv with torch and the
ringmaster wheel: target/test-venv (scripts/test.sh makes it) or --venv."""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ap = argparse.ArgumentParser()
ap.add_argument("--venv", default="target/test-venv")
ap.add_argument("--trials", type=int, default=3)
args = ap.parse_args()
venv = os.path.abspath(args.venv)
repo = os.path.abspath(os.path.dirname(__file__) + "/..")
py, rm, trun = (os.path.join(venv, "bin", b) for b in ("python", "ringmaster", "torchrun"))
for b in (py, rm, trun):
    if not os.path.exists(b):
        sys.exit(f"bench-notice: {b} is missing (run scripts/test.sh once, or pass --venv)")
STEPS, STEP_S = "2000", "0.01"


def events(run_dir):
    """events.jsonl's whole lines (a running launcher may be writing one)."""
    try:
        with open(os.path.join(run_dir, "events.jsonl")) as f:
            text = f.read()
    except OSError:
        return []
    return [json.loads(l) for l in text[: text.rfind("\n") + 1].splitlines() if l.strip()]


def wait(what, f, limit=120):
    t0 = time.time()
    while time.time() - t0 < limit:
        v = f()
        if v:
            return v
        time.sleep(0.05)
    sys.exit(f"bench-notice: timed out waiting for {what}")


def file_has(path, text):
    try:
        with open(path) as f:
            return text in f.read()
    except OSError:
        return False


def job(work, name, script, extra_env, notices, checkpoint=None):
    spec = {"name": name, "resources": {"nodes": 2, "devices_per_node": 2},
            "workload": {"kind": "command", "argv": [py, os.path.join(repo, "examples", script)]},
            "notices": notices, "env": {"STEPS": STEPS, "STEP_S": STEP_S, **extra_env},
            "recovery": {"notice_grace_s": 60, "heartbeat_interval_s": 0.2}}
    if checkpoint:
        spec["checkpoint"] = checkpoint
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


def stopped(out):
    steps = []
    for r in range(4):
        p = os.path.join(out, f"stopped-{r}")
        steps.append(open(p).read().strip() if os.path.exists(p) else None)
    return steps


def ckpt_loads(path):
    if not os.path.exists(path):
        return "none"
    r = subprocess.run([py, "-c", f"import torch; s = torch.load({path!r}, weights_only=True); print(s['step'])"],
                       capture_output=True, text=True)
    return f"step {r.stdout.strip()}" if r.returncode == 0 else "unreadable"


def ringmaster_package(work, n):
    name = f"pkg{n}"
    path = job(work, name, "ddp_train.py", {}, {"program_signal": "none"},
               {"dir": os.path.join(work, f"ck-{name}"), "every_steps": 50, "keep": 2})
    p = subprocess.Popen([rm, "run", path, "--log-dir", "runs", "--run-id", name, "-q"], cwd=work,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = os.path.join(work, "runs", name)
    wait("step 50's checkpoint", lambda: any(e.get("event") == "checkpoint_committed" for e in events(run_dir)))
    t0 = time.time()
    p.send_signal(signal.SIGUSR1)
    code = p.wait()
    took = time.time() - t0
    ev = events(run_dir)
    handled = next(e for e in ev if e["event"] == "notice_handled")
    s = next(e for e in ev if e["event"] == "notice_sent")["stop_step"]
    fresh = next(e for e in ev if e["event"] == "first_step")["since_launch_s"]
    r0 = time.time()
    subprocess.run([rm, "run", "--resume", f"runs/{name}", "--log-dir", "runs", "--run-id", name + "-r", "-q"],
                   cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    rev = events(os.path.join(run_dir + "-r"))
    resumed = next(e for e in rev if e["event"] == "first_step")["since_launch_s"]
    return {"exit": code, "out_s": took, "ranks": f"all 4 at step {s}" if handled["checkpointed"] else "not all",
            "checkpoint": f"committed, step {s}" if handled["checkpointed"] else "no",
            "fresh_first_step_s": fresh, "resume_first_step_s": resumed}


def signal_run(work, n, under):
    name = f"{under}{n}"
    out = os.path.join(work, f"out-{name}")
    os.makedirs(out)
    ck = os.path.join(work, f"{name}.pt")
    env = {"CKPT": ck, "STOPPED_OUT": out}
    if under == "rm":
        path = job(work, name, "ddp_signal.py", env, {"program_signal": "SIGTERM"})
        p = subprocess.Popen([rm, "run", path, "--log-dir", "runs", "--run-id", name, "-q"], cwd=work,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = os.path.join(work, "runs", name, "attempt-0", "rank-0.log")
    else:
        log = os.path.join(work, f"{name}.log")
        full = dict(os.environ, STEPS=STEPS, STEP_S=STEP_S, **env)
        p = subprocess.Popen([trun, "--standalone", "--nproc-per-node", "4", os.path.join(repo, "examples", "ddp_signal.py")],
                             cwd=work, env=full, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    wait("step 50", lambda: file_has(log, "step 50"))
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    code = p.wait()
    took = time.time() - t0
    st = stopped(out)
    same = len(set(st)) == 1 and st[0] is not None
    return {"exit": code, "out_s": took, "ranks": f"all 4 at step {st[0]}" if same else f"stopped: {st}",
            "checkpoint": ckpt_loads(ck)}


def main():
    work = tempfile.mkdtemp(prefix="ringmaster-bench-notice-")
    try:
        rows = {"ringmaster, package (ddp_train.py, SIGUSR1)": [],
                "ringmaster, signal mode (ddp_signal.py, SIGTERM)": [],
                "torchrun (ddp_signal.py, SIGTERM)": []}
        keys = list(rows)
        for n in range(args.trials):
            rows[keys[0]].append(ringmaster_package(work, n))
            rows[keys[1]].append(signal_run(work, n, "rm"))
            rows[keys[2]].append(signal_run(work, n, "tr"))
        print(f"notice -> every rank out, DDP gloo 4 ranks on the CPU, {STEP_S} s steps, {args.trials} trial(s), median:")
        base = statistics.median(r["out_s"] for r in rows[keys[2]])
        for k in keys:
            rs = rows[k]
            med = statistics.median(r["out_s"] for r in rs)
            print(f"  {k:50s} {med:6.2f} s  ({med / base:4.2f}x torchrun)  exit {sorted(set(r['exit'] for r in rs))}"
                  f"  {rs[-1]['ranks']}; checkpoint: {rs[-1]['checkpoint']}")
        pk = rows[keys[0]]
        fresh = statistics.median(r["fresh_first_step_s"] for r in pk)
        res = statistics.median(r["resume_first_step_s"] for r in pk)
        print(f"launch -> first step (Python, torch import, rendezvous, DDP): fresh {fresh:.2f} s, "
              f"resumed from the committed checkpoint {res:.2f} s ({res / fresh:.2f}x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


main()

"""Provider aws against moto's EC2 emulator: from `run` to every node
joined and to the first step, phase by phase (the RunInstances call, the
machine starting its user data, the agent joining, the rendezvous), and
one spot preemption with its replacement's phases beside the simulator's
same trial (provider sim, aws formats, no provisioning delay). The
machines are the suite's harness (tests/fixtures/ec2_machines.py): each
running instance's user data runs on a loopback address, so "boot" here
is the harness noticing the instance (it polls every 0.2 s) and bash
starting; a real instance boots in 1-3 minutes. Needs target/moto-venv
(scripts/test.sh makes it) and debug binaries (cargo build)."""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ap = argparse.ArgumentParser()
ap.add_argument("--trials", type=int, default=3)
ap.add_argument("--bin-dir", default="target/debug")
args = ap.parse_args()
repo = os.path.abspath(os.path.dirname(__file__) + "/..")
bins = os.path.abspath(os.path.join(repo, args.bin_dir))
moto = os.path.join(repo, "target/moto-venv/bin/moto_server")
for b in (moto, os.path.join(bins, "ringmaster")):
    if not os.path.exists(b):
        sys.exit(f"bench-aws: {b} is missing (run scripts/test.sh once, and cargo build)")
fixtures = os.path.join(repo, "tests/fixtures")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def events(run_dir):
    with open(os.path.join(run_dir, "events.jsonl")) as f:
        text = f.read()
    return [json.loads(l) for l in text[: text.rfind("\n") + 1].splitlines() if l.strip()]


def ts(s):
    from datetime import datetime
    return datetime.strptime(s.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def wait(what, f, limit=120):
    t0 = time.time()
    while time.time() - t0 < limit:
        v = f()
        if v:
            return v
        time.sleep(0.05)
    sys.exit(f"bench-aws: timed out waiting for {what}")


work = tempfile.mkdtemp(prefix="bench-aws-")
port = free_port()
procs = []
try:
    procs.append(subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    endpoint = f"http://127.0.0.1:{port}/"
    wait("moto", lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0)
    lab = os.path.join(work, "lab")
    control = os.path.join(lab, "control")
    os.makedirs(control)
    procs.append(subprocess.Popen([sys.executable, os.path.join(fixtures, "ec2_machines.py"),
                                   "--endpoint", endpoint, "--state", lab, "--control", control,
                                   "--bin-dir", bins, "--first-address", "127.0.0.200"],
                                  stderr=subprocess.DEVNULL))
    env = dict(os.environ, AWS_ENDPOINT_URL_EC2=endpoint, AWS_ACCESS_KEY_ID="AKIDBENCH",
               AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1", HOME=work)

    def job(name, provider, steps=1500):
        return {
            "name": name,
            "resources": {"nodes": 2, "devices_per_node": 1},
            "workload": {"kind": "train", "steps": steps, "input_dim": 16, "hidden": 32, "layers": 3,
                         "output_dim": 4, "batch_per_rank": 16, "lr": 0.05, "seed": 7,
                         "log_every": 10, "pace_ms": 2},
            "threads_per_worker": 1,
            "collective": {"timeout_s": 20},
            "checkpoint": {"dir": os.path.join(work, "ck-" + name), "every_steps": 200, "keep": 2},
            "recovery": {"heartbeat_interval_s": 0.2, "grace_period_s": 3},
            "provider": provider,
        }

    aws = {"kind": "aws", "instance_type": "g5.2xlarge", "zones": ["us-east-1a", "us-east-1b"],
           "image_id": "ami-0123456789abcdef0", "rendezvous_host": "127.0.0.1",
           "rendezvous_port": 0, "boot_timeout_s": 60}

    def run(name, provider, preempt_node=None):
        path = os.path.join(work, name + ".json")
        with open(path, "w") as f:
            json.dump(job(name, provider), f)
        t0 = time.time()
        p = subprocess.Popen([os.path.join(bins, "ringmaster"), "run", path, "--run-id", name,
                              "--log-dir", "runs", "-q"], cwd=work, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        run_dir = os.path.join(work, "runs", name)
        if preempt_node is not None:
            wait("the first step", lambda: os.path.exists(os.path.join(run_dir, "events.jsonl"))
                 and any(e["event"] == "first_step" for e in events(run_dir)))
            with open(os.path.join(control, f"preempt-{preempt_node}"), "w") as f:
                f.write("3")
        _, err = p.communicate(timeout=300)
        if p.returncode != 0:
            sys.exit(f"bench-aws: {name} exited {p.returncode}: {err.decode()[-2000:]}")
        if preempt_node is not None:
            os.remove(os.path.join(control, f"preempt-{preempt_node}"))
            os.remove(os.path.join(control, f"preempt-{preempt_node}.done"))
        with open(os.path.join(run_dir, "report.json")) as f:
            return t0, events(run_dir), json.load(f)

    played = {}

    def machines_played():
        with open(os.path.join(lab, "machines.jsonl")) as f:
            for l in f:
                e = json.loads(l)
                if e["event"] == "played":
                    played[e["id"]] = e["t"]

    phases = {k: [] for k in ("RunInstances call (per node)", "answer -> user data running (harness)",
                              "user data -> agent joined", "run -> every agent joined",
                              "last agent -> rendezvous complete", "run -> first step")}
    pre = {k: [] for k in ("aws: notice -> every rank out", "aws: out -> replacement requested",
                           "aws: replacement requested -> its agent joined",
                           "aws: out -> first step again", "sim: notice -> every rank out",
                           "sim: out -> replacement ready", "sim: out -> first step again")}
    for trial in range(args.trials):
        t0, ev, r = run(f"start-{trial}", aws)
        machines_played()
        start = ts(next(e for e in ev if e["event"] == "run_started")["ts"])
        req = [e for e in ev if e["event"] == "machine_requested" and e["outcome"] == "ok"]
        joined = [e for e in ev if e["event"] == "agent_joined"]
        for e in req:
            phases["RunInstances call (per node)"].append(e["api_s"])
            answered = ts(e["ts"])
            phases["answer -> user data running (harness)"].append(played[e["machine"]] - answered)
            j = next(x for x in joined if x["node"] == e["node"])
            phases["user data -> agent joined"].append(ts(j["joined"]) - played[e["machine"]])
        last = max(ts(j["joined"]) for j in joined)
        phases["run -> every agent joined"].append(last - start)
        rc = next(e for e in ev if e["event"] == "rendezvous_complete")
        phases["last agent -> rendezvous complete"].append(ts(rc["ts"]) - last)
        fs = next(e for e in ev if e["event"] == "first_step")
        phases["run -> first step"].append(ts(fs["ts"]) - start)

        _, ev, r = run(f"pre-{trial}", aws, preempt_node=1)
        p = r["preemptions"][0]
        pre["aws: notice -> every rank out"].append(p["notice_to_out_s"])
        pre["aws: out -> replacement requested"].append(p["out_to_replacement_s"])
        pre["aws: out -> first step again"].append(p["out_to_first_step_s"])
        rep = [e for e in ev if e["event"] == "machine_requested" and e["node"] == 1][-1]
        j = [e for e in ev if e["event"] == "agent_joined" and e["node"] == 1][-1]
        pre["aws: replacement requested -> its agent joined"].append(ts(j["joined"]) - ts(rep["ts"]))
        sim = {"kind": "sim", "cloud": "aws", "provisioning_delay_s": 0, "notice_window_s": 3,
               "preemptions": [{"node": 1, "at_s": 1.0}]}
        _, ev, r = run(f"sim-{trial}", sim)
        p = r["preemptions"][0]
        pre["sim: notice -> every rank out"].append(p["notice_to_out_s"])
        pre["sim: out -> replacement ready"].append(p["out_to_replacement_s"])
        pre["sim: out -> first step again"].append(p["out_to_first_step_s"])

    print(f"provider aws on moto {subprocess.run([moto.replace('moto_server', 'python'), '-c', 'import moto; print(moto.__version__)'], capture_output=True, text=True).stdout.strip()}, "
          f"{args.trials} trial(s), median (min-max) in seconds; 2 nodes x 1 worker")
    for title, table in (("from `run` to the first step", phases), ("one spot preemption (3 s notice)", pre)):
        print(f"\n{title}:")
        for k, v in table.items():
            print(f"  {k:<48} {statistics.median(v):8.3f}  ({min(v):.3f}-{max(v):.3f})")
finally:
    for p in reversed(procs):
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(work, ignore_errors=True)

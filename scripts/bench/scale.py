"""The launcher at scale: a real `ringmaster run --node-rank 0` leads a run
of N ranks; node 0's 8 ranks are real workers running a Python program
that reports its steps (tests/fixtures/reporter.py); nodes 1.. are played
by ringmaster-loadgen over loopback TCP (one agent connection per node
from its own 127.1.x.y address; each rank's heartbeat and control
connection relayed on it as the real agent relays its workers', or with
--modes direct two TCP connections of the rank's own, the shape before
relays). One run per size goes through: all joined; a rank
goes silent and is named; the group restarts; steady heartbeats; a notice
(SIGUSR1) and its agreed stop step reaching every rank; the stop.

Figures (one table row per size): launch -> all joined and joins/s
(attempt 0, events.jsonl), the restart (heartbeat lost -> all joined
again), detection of the silent rank (its last beat -> the launcher's
group_stopping naming it), notice -> the agreed step at every rank,
heartbeats/s handled and the launcher's CPU share and memory (/proc) in a
steady window, and the descriptors it holds then. Usage:
scripts/bench-scale.sh [--ranks 1024,4096,8192] [--modes relay,direct]."""
import argparse
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PER_NODE = 8


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ts(e):
    return datetime.datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()


def events(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def proc_sample(pid):
    """(cpu seconds, rss KiB) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return cpu, rss


def wait_for(what, limit, f):
    t0 = time.time()
    while time.time() - t0 < limit:
        v = f()
        if v:
            return v
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def run(ranks, bin_dir, interval, steady_s, keep, mode):
    nodes = ranks // PER_NODE
    work = tempfile.mkdtemp(prefix=f"ringmaster-scale-{ranks}-")
    with open(os.path.join(work, "token"), "w") as f:
        f.write(os.urandom(16).hex())
    os.makedirs(os.path.join(work, "out"))
    job = {
        "name": "scale", "resources": {"nodes": nodes, "devices_per_node": PER_NODE},
        "workload": {"kind": "command", "argv": [sys.executable, os.path.join(ROOT, "tests/fixtures/reporter.py")]},
        "env": {"PYTHONPATH": os.path.join(ROOT, "python"), "TOTAL": "1000000", "STEP_S": "0.02",
                "OUT_DIR": os.path.join(work, "out")},
        "notices": {"program_signal": "none"},
        "recovery": {"heartbeat_interval_s": interval, "heartbeat_timeout_s": 2 * interval,
                     "hang_timeout_s": 600, "rendezvous_timeout_s": 300, "max_restarts": 1,
                     "notice_grace_s": 60},
    }
    with open(os.path.join(work, "job.json"), "w") as f:
        json.dump(job, f)
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    leader = subprocess.Popen(
        [os.path.join(bin_dir, "ringmaster"), "run", "job.json", "--node-rank", "0", "--rdzv-endpoint", endpoint,
         "--token-file", "token", "-q", "--log-dir", "runs", "--run-id", "scale"],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    # A rank of the last node goes silent 3 s into the first attempt.
    silent_rank = ranks - 3
    loadgen = subprocess.Popen(
        [os.path.join(bin_dir, "ringmaster-loadgen"), "--leader", endpoint, "--token-file", "token",
         "--last", str(nodes - 1), "--step-ms", "20", "--silent-rank", str(silent_rank), "--silent-at", "150",
         "--out", "loadgen.json", "--limit-s", "600"] + (["--direct"] if mode == "direct" else []),
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    ev_path = os.path.join(work, "runs", "scale", "events.jsonl")
    samples = []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            try:
                samples.append((time.time(), *proc_sample(leader.pid)))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
            time.sleep(0.25)

    threading.Thread(target=sampler, daemon=True).start()
    try:
        complete = lambda a: [e for e in events(ev_path) if e["event"] == "rendezvous_complete" and e["attempt"] == a]
        wait_for("attempt 1 joined", 600, lambda: complete(1))
        time.sleep(1.0)
        w0 = (time.time(), *proc_sample(leader.pid))
        lg0 = proc_sample(loadgen.pid)[0]
        time.sleep(steady_s)
        w1 = (time.time(), *proc_sample(leader.pid))
        lg1 = proc_sample(loadgen.pid)[0]
        fds = len(os.listdir(f"/proc/{leader.pid}/fd"))
        t_notice = time.time()
        os.kill(leader.pid, signal.SIGUSR1)
        out, err = leader.communicate(timeout=300)
        lg_out, lg_err = loadgen.communicate(timeout=120)
    finally:
        stop.set()
        for p in (leader, loadgen):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    if leader.returncode != 8:
        raise SystemExit(f"{ranks} ranks: leader exit {leader.returncode}: {err[-2000:]}")
    lg = json.load(open(os.path.join(work, "loadgen.json")))
    evs = events(ev_path)
    first = lambda name, **kw: next(e for e in evs if e["event"] == name and all(e.get(k) == v for k, v in kw.items()))
    rc0, rc1 = first("rendezvous_complete", attempt=0), first("rendezvous_complete", attempt=1)
    lost = first("group_stopping", reason="heartbeat-lost")
    notice_sent = first("notice_sent")
    sim_ranks = ranks - PER_NODE
    notices1 = [n for n in lg["notices"] if n[0] == 1]
    stops1 = sorted({s[2] for s in lg["stops"] if s[0] == 1})
    real_stops = sorted({int(open(os.path.join(work, "out", f)).read()) for f in os.listdir(os.path.join(work, "out"))
                         if f.startswith("stopped-") and not f.endswith(".tmp")})
    welcomes0 = [w for w in lg["welcomes"] if w[0] == 0]
    welcomes1 = [w for w in lg["welcomes"] if w[0] == 1]
    peak_rss = max(s[2] for s in samples) if samples else 0
    r = {
        "ranks": ranks, "nodes": nodes, "interval_s": interval, "mode": mode, "launcher_fds": fds,
        "loadgen_cpu_share": (lg1 - lg0) / (w1[0] - w0[0]),
        "launch_to_ready_s": rc0["launch_to_ready_s"], "rendezvous_s": rc0["rendezvous_s"],
        "joins_per_s": ranks / rc0["rendezvous_s"] if rc0["rendezvous_s"] else None,
        "welcomes_round0": len(welcomes0), "welcomes_round1": len(welcomes1),
        "silent_named": lost["message"], "silent_rank": silent_rank,
        "detect_s": ts(lost) - lg["silent"][1] / 1e3,
        "restart_s": ts(rc1) - ts(lost), "restart_launch_to_ready_s": rc1["launch_to_ready_s"],
        "cpu_share": (w1[1] - w0[1]) / (w1[0] - w0[0]), "rss_mib": w1[2] / 1024, "peak_rss_mib": peak_rss / 1024,
        "rss_kib_per_rank": w1[2] / ranks,
        "beats": lg["beats"], "beat_answer_ms_mean": lg["beat_answer_ms_mean"], "beat_answer_ms_max": lg["beat_answer_ms_max"],
        "beats_per_s_nominal": ranks / interval,
        "notice_to_sent_s": ts(notice_sent) - t_notice,
        "notice_to_all_ranks_s": (max(n[2] for n in notices1) / 1e3 - t_notice) if notices1 else None,
        "notified_ranks": len(notices1), "simulated_ranks": sim_ranks,
        "agreed_step": notice_sent.get("stop_step"), "stops_simulated": stops1, "stops_real": real_stops,
        "loadgen_failures": lg["failures_total"], "first_failures": lg["failures"][:3],
        "work": work,
    }
    if not keep:
        subprocess.run(["rm", "-rf", work])
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", default="1024,4096,8192")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--steady-s", type=float, default=5.0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--modes", default="relay", help="relay, direct or both (relay,direct)")
    ap.add_argument("--json", default=os.path.join(ROOT, ".bench", "scale.json"))
    a = ap.parse_args()
    rows = []
    for n in [int(x) for x in a.ranks.split(",")]:
        for mode in a.modes.split(","):
            r = run(n, a.bin_dir, a.interval, a.steady_s, a.keep, mode)
            print(json.dumps(r), file=sys.stderr, flush=True)
            rows.append(r)
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"machine": f"{platform.node()} {os.cpu_count()} cores", "rows": rows}, f, indent=1)
    f2 = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"
    print(f"\nmachine: {os.cpu_count()} cores, {platform.platform()}; heartbeat interval {a.interval} s, "
          f"heartbeat_timeout_s {2 * a.interval} s\n")
    print("| ranks | connections | launch -> all joined (s) | joins/s | restart: lost -> all joined (s) | silent rank named after (s) "
          "| notice -> agreed step at every rank (s) | beats/s | beat answer mean/max (ms) | launcher CPU | load generator CPU | RSS (MiB) | KiB/rank | launcher fds |")
    print("|" + "---|" * 14)
    for r in rows:
        print(f"| {r['ranks']} | {r['mode']} | {f2(r['launch_to_ready_s'])} | {f2(r['joins_per_s'], 0)} | {f2(r['restart_s'])} "
              f"| {f2(r['detect_s'], 2)} | {f2(r['notice_to_all_ranks_s'])} | {f2(r['beats_per_s_nominal'], 0)} "
              f"| {f2(r['beat_answer_ms_mean'], 2)}/{f2(r['beat_answer_ms_max'], 1)} | {r['cpu_share'] * 100:.0f}% "
              f"| {r['loadgen_cpu_share'] * 100:.0f}% | {r['rss_mib']:.0f} | {r['rss_kib_per_rank']:.1f} | {r['launcher_fds']} |")
    for r in rows:
        ok = (r["welcomes_round0"] == r["simulated_ranks"] and r["notified_ranks"] == r["simulated_ranks"]
              and r["loadgen_failures"] == 0)
        print(f"\n{r['ranks']} ranks ({r['mode']}): {'every simulated rank welcomed once per round and told the agreed step' if ok else 'PROBLEMS'}; "
              f"{r['silent_named']!r}; agreed step {r['agreed_step']}, simulated ranks stopped at {r['stops_simulated']}, "
              f"real ranks at {r['stops_real']}; loadgen failures {r['loadgen_failures']} {r['first_failures']}")


if __name__ == "__main__":
    main()

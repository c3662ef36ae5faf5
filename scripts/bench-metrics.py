"""The metrics endpoint's cost, in one run: a `train` job of 16 local ranks
(4 nodes x 4 workers) with and without `--metrics-addr`, alternated, and
while it is on a scrape every 0.5 s. Prints the step rate with metrics on
against off (a ratio), the launcher's own CPU per second of run (from
/proc/<pid>/stat), and the scrape latency and size."""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.dirname(__file__) + "/..")
RM = os.environ.get("RINGMASTER", os.path.join(ROOT, "target", "release", "ringmaster"))
if not os.path.exists(RM):
    RM = os.path.join(ROOT, "target", "debug", "ringmaster")
TRIALS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
TICK = os.sysconf("SC_CLK_TCK")
SPEC = {"name": "metrics-bench", "resources": {"nodes": 4, "devices_per_node": 4},
        "workload": {"kind": "train", "steps": 600, "input_dim": 64, "hidden": 128, "layers": 2,
                     "output_dim": 16, "batch_per_rank": 32, "log_every": 1000},
        "threads_per_worker": 1}


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return None


def run(work, n, metrics):
    name = f"{'on' if metrics else 'off'}{n}"
    job = os.path.join(work, name + ".json")
    with open(job, "w") as f:
        json.dump(SPEC, f)
    args = [RM, "run", job, "--log-dir", "runs", "--run-id", name, "-q"]
    if metrics:
        args += ["--metrics-addr", "127.0.0.1:0"]
    t0 = time.monotonic()
    p = subprocess.Popen(args, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu, addr, lat, size, next_scrape = 0.0, None, [], [], 0.0
    while p.poll() is None:
        c = cpu_s(p.pid)
        cpu = c if c is not None else cpu
        if metrics and addr is None:
            try:
                text = open(os.path.join(work, "runs", name, "events.jsonl")).read()
                for l in text[: text.rfind("\n") + 1].splitlines():
                    e = json.loads(l)
                    if e.get("event") == "metrics_listening":
                        addr = e["addr"]
            except OSError:
                pass
        if addr and time.monotonic() >= next_scrape:
            next_scrape = time.monotonic() + 0.5
            s0 = time.perf_counter()
            try:
                body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read()
                lat.append((time.perf_counter() - s0) * 1000)
                size.append(len(body))
            except OSError:
                pass
        time.sleep(0.05)
    wall = time.monotonic() - t0
    rep = json.load(open(os.path.join(work, "runs", name, "report.json")))
    rate = rep["summary"].get("steps_per_s") or rep["results"]["0"]["steps_per_s"]
    return {"rate": rate, "cpu_per_s": cpu / wall, "lat": lat, "size": size}


def main():
    work = tempfile.mkdtemp(prefix="ringmaster-bench-metrics-")
    off, on = [], []
    for n in range(TRIALS):
        off.append(run(work, n, False))
        on.append(run(work, n, True))
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    lat = sorted(x for r in on for x in r["lat"])
    size = [x for r in on for x in r["size"]]
    print(f"{RM}: train, 16 ranks (4 nodes x 4), {TRIALS} trial(s) each, medians")
    print(f"  step rate: metrics off {med(off, 'rate'):.1f} steps/s, on {med(on, 'rate'):.1f} steps/s "
          f"({med(on, 'rate') / med(off, 'rate'):.3f}x)")
    print(f"  launcher CPU per second of run: off {med(off, 'cpu_per_s'):.4f} s, on {med(on, 'cpu_per_s'):.4f} s")
    if lat:
        print(f"  scrape: {len(lat)} scrapes, latency p50 {lat[len(lat) // 2]:.2f} ms, "
              f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.2f} ms, {statistics.median(size) / 1024:.1f} KiB each")


main()

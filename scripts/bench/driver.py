"""Runs ringmaster's benchmarks and their baselines in one run and prints
markdown tables with ratios (ringmaster vs baseline, measured now, here).
Results also go to .bench/results.json. See scripts/bench.sh."""
import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RM = os.path.join(ROOT, "target", "release", "ringmaster")
HERE = os.path.dirname(os.path.abspath(__file__))
WORK = tempfile.mkdtemp(prefix="ringmaster-bench-")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ringmaster(spec, extra=()):
    """Run a job; return its report."""
    run_id = f"b{time.time_ns()}"
    job = os.path.join(WORK, run_id + ".json")
    with open(job, "w") as f:
        json.dump(spec, f)
    r = subprocess.run([RM, "run", job, "-q", "--log-dir", os.path.join(WORK, "runs"), "--run-id", run_id, *extra],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        sys.exit(f"ringmaster failed ({r.returncode}): {r.stderr}\n{r.stdout}")
    with open(os.path.join(WORK, "runs", run_id, "report.json")) as f:
        return json.load(f)


def torchrun(py, nproc, script, args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, os.cpu_count() // nproc))))
    env.update(env_extra or {})
    cmd = [py, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), script, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if r.returncode != 0:
        sys.exit(f"torchrun failed: {r.stderr[-3000:]}")
    return r.stdout


def table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def f(x, d=3):
    return "-" if x is None else f"{x:.{d}f}"


def ratio(a, b, invert=False):
    if a is None or b is None or a == 0 or b == 0:
        return "-"
    return f"{(b / a) if invert else (a / b):.2f}x"


def bench_launch(py, sizes, repeats):
    rows, out = [], []
    for n in sizes:
        nodes = 2 if n >= 2 else 1
        spec = {"name": "ready", "resources": {"nodes": nodes, "devices_per_node": n // nodes},
                "workload": {"kind": "gemm", "m": 8, "n": 8, "k": 8, "iterations": 1, "warmup": 0}, "threads_per_worker": 1}
        native = statistics.median(ringmaster(spec)["attempts"][0]["launch_to_ready_s"] for _ in range(repeats))
        # The same Python program under both launchers: time from starting
        # the launcher until every rank has joined a gloo group.
        rm_py = tr_py = None
        if py:
            def via(launch):
                vals = []
                for _ in range(max(1, repeats // 2)):
                    d = tempfile.mkdtemp(dir=WORK)
                    t0 = time.time()
                    launch(d)
                    vals.append(max(float(open(os.path.join(d, x)).read()) for x in os.listdir(d)) - t0)
                return statistics.median(vals)
            script = os.path.join(HERE, "torch_ready.py")
            def rm_launch(d):
                s = {"name": "ready-py", "resources": {"nodes": 1, "devices_per_node": n},
                     "workload": {"kind": "command", "argv": [py, script, d]}, "threads_per_worker": 1,
                     "recovery": {"rendezvous_timeout_s": 300}}
                ringmaster(s)
            rm_py = via(rm_launch)
            tr_py = via(lambda d: torchrun(py, n, script, [d]))
        out.append({"workers": n, "ringmaster_native_s": native, "ringmaster_torch_script_s": rm_py, "torchrun_torch_script_s": tr_py})
        rows.append([str(n), f(native, 4), f(rm_py, 2), f(tr_py, 2), ratio(native, tr_py, invert=True), ratio(rm_py, tr_py, invert=True)])
    table("Launch to all ready (seconds, median)",
          ["workers", "ringmaster (own workers)", "ringmaster + torch script", "torchrun + torch script", "torchrun / ringmaster own", "torchrun / ringmaster, same script"], rows)
    return out


def bench_ring(py, ranks_list, sizes, iters):
    """Each rank count in every layout ringmaster can run it in (nodes x
    ranks per node; local nodes are 127.0.0.x on this machine), with the
    shared-memory path and with one TCP ring through every rank, against
    gloo under torchrun with the same number of ranks, all in this run."""
    rows, out = [], []
    for ranks in ranks_list:
        gloo = {}
        if py:
            for line in torchrun(py, ranks, os.path.join(HERE, "gloo_allreduce.py"), [",".join(map(str, sizes)), str(iters), "2"]).splitlines():
                if line.startswith("{"):
                    j = json.loads(line)
                    gloo[j["bytes"]] = j
        layouts = [(n, ranks // n) for n in (1, 2) if ranks % n == 0 and ranks // n >= 1]
        for nodes, per in layouts:
            for shm in ([True, False] if per > 1 else [False]):
                spec = {"name": "ring", "resources": {"nodes": nodes, "devices_per_node": per},
                        "collective": {"shared_memory": shm},
                        "workload": {"kind": "allreduce", "min_bytes": sizes[0], "max_bytes": sizes[-1], "step_factor": 4,
                                     "iterations": iters, "warmup": 2, "check": True}}
                rep = ringmaster(spec)
                ring = {r["size_bytes"]: r for r in rep["summary"]["rows"]}
                path = "shared memory + ring across nodes" if shm else "TCP ring"
                for s in sizes:
                    if ring[s]["wrong"]:
                        sys.exit(f"allreduce {nodes}x{per} shm={shm}: {ring[s]['wrong']} wrong elements at {s} bytes")
                    rb = ring[s]["ip_busbw_gbps"]
                    gb = gloo.get(s, {}).get("busbw")
                    out.append({"ranks": ranks, "nodes": nodes, "per_node": per, "shared_memory": shm, "bytes": s,
                                "busbw": rb, "oop_busbw": ring[s]["oop_busbw_gbps"], "gloo_busbw": gb})
                    rows.append([str(ranks), f"{nodes} x {per}", path, f"{s >> 20} MiB", f(rb), f(ring[s]["oop_busbw_gbps"]), f(gb), ratio(rb, gb)])
    table("All-reduce bus bandwidth, float32 (GB/s)", ["ranks", "nodes x ranks", "ringmaster path", "size", "in-place", "out-of-place", "gloo", "in-place / gloo"], rows)
    return out


def bench_gemm(py, sizes, iters):
    rows, out = [], []
    threads = os.cpu_count()
    npres = {}
    if py:
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        r = subprocess.run([py, os.path.join(HERE, "numpy_gemm.py"), ",".join(map(str, sizes)), str(iters)],
                           capture_output=True, text=True, timeout=900, env=env)
        for line in r.stdout.splitlines():
            j = json.loads(line)
            npres[j["n"]] = j
    for n in sizes:
        rep = ringmaster({"name": "gemm", "resources": {"nodes": 1, "devices_per_node": 1}, "threads_per_worker": threads,
                          "workload": {"kind": "gemm", "m": n, "n": n, "k": n, "iterations": iters, "warmup": 1}})
        g = rep["results"]["0"]["gflops_best"]
        npg = npres.get(n, {}).get("gflops")
        out.append({"n": n, "ringmaster_gflops": g, "numpy_gflops": npg, "numpy_blas": npres.get(n, {}).get("blas")})
        rows.append([str(n), str(threads), f(g, 1), f(npg, 1), ratio(g, npg)])
    table("GEMM float32, one worker (GFLOP/s, best)", ["n", "threads", "ringmaster (gemm crate)", "numpy", "ringmaster / numpy"], rows)
    if npres:
        print(f"\nnumpy BLAS: {next(iter(npres.values()))['blas']}")
    return out


def bench_train(py, steps):
    width, layers, batch, ranks = 1024, 3, 256, 2
    spec = {"name": "train", "resources": {"nodes": 2, "devices_per_node": 1},
            "workload": {"kind": "train", "steps": steps, "input_dim": width, "hidden": width, "layers": layers,
                         "output_dim": width, "batch_per_rank": batch, "lr": 0.01, "momentum": 0.9, "log_every": 1000}}
    rep = ringmaster(spec)
    rm = rep["summary"]["steps_per_s"]
    th = None
    if py:
        for line in torchrun(py, ranks, os.path.join(HERE, "torch_ddp_train.py"), [str(steps), str(width), str(layers), str(batch)]).splitlines():
            if line.startswith("{"):
                th = json.loads(line)["steps_per_s"]
    table(f"Data-parallel training: {layers}-layer MLP width {width} ({rep['summary']['params']} params), batch {batch}/rank, {ranks} ranks (steps/s)",
          ["ringmaster train", "torch DDP (gloo)", "ringmaster / torch"], [[f(rm, 2), f(th, 2), ratio(rm, th)]])
    return {"ringmaster_steps_per_s": rm, "torch_ddp_steps_per_s": th}


def bench_checkpoint(py, mib):
    d = tempfile.mkdtemp(dir=WORK)
    subprocess.run(["cargo", "build", "--release", "--locked", "--example", "ckpt_bench"], cwd=ROOT, check=True, capture_output=True)
    r = subprocess.run([os.path.join(ROOT, "target", "release", "examples", "ckpt_bench"), os.path.join(d, "ck"), str(mib), "1"],
                       capture_output=True, text=True, timeout=600, check=True)
    ours = json.loads(r.stdout)
    rows = [["ringmaster checkpoint (safetensors + CRC-32C, fsync, manifest, rename)", f(ours["write_gbps"], 2), "1.00x"]]
    out = {"ringmaster": ours, "baselines": []}
    if py:
        b = subprocess.run([py, os.path.join(HERE, "ckpt_baselines.py"), d, str(mib)], capture_output=True, text=True, timeout=600)
        for line in b.stdout.splitlines():
            j = json.loads(line)
            out["baselines"].append(j)
            rows.append([j["method"], f(j["gbps"], 2), ratio(ours["write_gbps"], j["gbps"])])
    table(f"Checkpoint write, {mib} MiB float32, fsync'd (GB/s; last column: ringmaster / this)", ["method", "GB/s", "ratio"], rows)
    print(f"\nverified load (CRC-32C of every shard): {ours['load_gbps']:.2f} GB/s")
    return out


def _events(run_dir):
    try:
        with open(os.path.join(run_dir, "events.jsonl")) as fh:
            return [json.loads(l) for l in fh if l.strip()]
    except FileNotFoundError:
        return []


def _wait_event(proc, run_dir, name, timeout=600, pred=lambda e: True):
    end = time.time() + timeout
    while time.time() < end:
        for e in _events(run_dir):
            if e["event"] == name and pred(e):
                return e
        if proc is not None and proc.poll() is not None and not any(e["event"] == name and pred(e) for e in _events(run_dir)):
            sys.exit(f"bench: ringmaster exited {proc.returncode} before {name}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    sys.exit(f"bench: no {name} event in {run_dir}")


def _ts(e):
    from datetime import datetime
    return datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()


def _start(spec, run_id, resume=None):
    runs = os.path.join(WORK, "runs")
    if resume:
        what = ["--resume", resume]
    else:
        what = [os.path.join(WORK, run_id + ".json")]
        with open(what[0], "w") as fh:
            json.dump(spec, fh)
    p = subprocess.Popen([RM, "run", *what, "-q", "--log-dir", runs, "--run-id", run_id],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return p, os.path.join(runs, run_id)


def bench_preemption(sizes_gb):
    """Notice -> committed checkpoint and exit, restart -> first resumed step,
    and in-place recovery after a SIGKILLed worker, for a training state of
    the given size (weights + momentum, float32, 2 ranks)."""
    rows, out = [], []
    for gb in sizes_gb:
        # 3-layer MLP of width w: about 3 w^2 params; state = 2 * params * 4 B.
        w = int(((gb * 1e9) / 8 / 3) ** 0.5)
        ck = tempfile.mkdtemp(dir=WORK)
        spec = {"name": "preempt", "resources": {"nodes": 2, "devices_per_node": 1},
                "workload": {"kind": "train", "steps": 100000, "input_dim": w, "hidden": w, "layers": 3, "output_dim": w,
                             "batch_per_rank": 8, "lr": 0.001, "log_every": 100000},
                "checkpoint": {"dir": os.path.join(ck, "a"), "every_steps": 100000, "keep": 1},
                "recovery": {"heartbeat_interval_s": 0.1, "max_infra_restarts": 1, "notice_grace_s": 120, "hang_timeout_s": 600}}
        rid = f"n{time.time_ns()}"
        p, rd = _start(spec, rid)
        _wait_event(p, rd, "first_step")
        time.sleep(1.0)
        p.send_signal(signal.SIGUSR1)
        code = p.wait(timeout=900)
        if code != 8:
            sys.exit(f"bench: notice run exited {code}: {p.stderr.read()[-2000:]}")
        handled = _wait_event(p, rd, "notice_handled")
        state = None
        with open(os.path.join(rd, "report.json")) as fh:
            rep = json.load(fh)
        params = rep["summary"]["params"]
        state = 2 * params * 4 / 1e9
        # The checkpoint write at the stop step (rank 0's: write + commit).
        write_s = rep["results"]["0"]["stop_checkpoint_s"]
        notice_s = handled["seconds_after_notice"]
        t0 = time.time()
        p2, rd2 = _start(spec, rid + "-r", resume=rd)
        first = _wait_event(p2, rd2, "first_step")
        resume_s = _ts(first) - t0
        p2.send_signal(signal.SIGINT)
        p2.wait(timeout=300)
        # In place: SIGKILL one worker, the launcher restarts the group from
        # the newest checkpoint (the infrastructure budget).
        spec2 = json.loads(json.dumps(spec))
        spec2["checkpoint"]["dir"] = os.path.join(ck, "b")
        spec2["checkpoint"]["every_steps"] = 5
        rid3 = f"k{time.time_ns()}"
        p3, rd3 = _start(spec2, rid3)
        _wait_event(p3, rd3, "first_step")
        # Wait for a committed checkpoint so the restart has one to load.
        end = time.time() + 600
        ckb = spec2["checkpoint"]["dir"]
        while not (os.path.isdir(ckb) and any(n.startswith("step-") and not n.endswith(".tmp") for n in os.listdir(ckb))):
            if time.time() > end:
                sys.exit("bench: no checkpoint")
            time.sleep(0.05)
        victim = next(e for e in _events(rd3) if e["event"] == "worker_started" and e["rank"] == 1)["pid"]
        os.kill(victim, signal.SIGKILL)
        killed = _wait_event(p3, rd3, "worker_exited", pred=lambda e: e["rank"] == 1 and e.get("signal") == 9)
        first3 = _wait_event(p3, rd3, "first_step", pred=lambda e: e["attempt"] == 1)
        inplace_s = _ts(first3) - _ts(killed)
        p3.send_signal(signal.SIGINT)
        p3.wait(timeout=300)
        shutil.rmtree(ck, ignore_errors=True)
        rows.append([f"{state:.2f}", f(notice_s, 2), f(write_s, 2), f(state / write_s if write_s else None, 2), f(resume_s, 2),
                     f(notice_s + resume_s, 2), f(inplace_s, 2)])
        out.append({"state_gb": state, "notice_to_exit_s": notice_s, "stop_checkpoint_s": write_s, "resume_to_first_step_s": resume_s,
                    "inplace_kill_to_first_step_s": inplace_s})
    table("Preemption: notice -> all ranks out with the checkpoint committed (includes finishing the step in flight); "
          "restart -> first resumed step (2 ranks, local disk)",
          ["state GB", "notice -> out (s)", "of which checkpoint (s)", "checkpoint GB/s", "resume -> first step (s)", "notice -> resumed (s)",
           "SIGKILL -> first step, in place (s)"], rows)
    return out


def bench_survivors(sizes_gb):
    """Recovery from one preemption (sim provider, 2 nodes x 1 worker, node 1
    preempted, no provisioning delay): the survivor kept up with its state
    in memory and the replacement fed by it, against the whole group
    restarted from the checkpoint. Same run, same machine, one size at a
    time."""
    rows, out = [], []
    for gb in sizes_gb:
        w = int(((gb * 1e9) / 8 / 3) ** 0.5)
        res = {}
        for keep in (False, True):
            ck = tempfile.mkdtemp(dir=WORK)
            spec = {"name": "survivors", "resources": {"nodes": 2, "devices_per_node": 1},
                    "workload": {"kind": "train", "steps": 100000, "input_dim": w, "hidden": w, "layers": 3, "output_dim": w,
                                 "batch_per_rank": 8, "lr": 0.001, "log_every": 100000},
                    "checkpoint": {"dir": os.path.join(ck, "c"), "every_steps": 100000, "keep": 1},
                    "provider": {"kind": "sim", "cloud": "aws", "provisioning_delay_s": 0, "notice_window_s": 120,
                                 "preemptions": [{"node": 1, "at_s": 4 + 8 * gb}]},
                    "recovery": {"heartbeat_interval_s": 0.1, "notice_grace_s": 120, "hang_timeout_s": 600,
                                 "keep_survivors": keep}}
            rid = f"s{time.time_ns()}"
            p, rd = _start(spec, rid)
            _wait_event(p, rd, "first_step", timeout=900, pred=lambda e: e["attempt"] == 1)
            p.send_signal(signal.SIGINT)
            p.wait(timeout=300)
            with open(os.path.join(rd, "report.json")) as fh:
                rep = json.load(fh)
            pre = rep["preemptions"][0]
            res[keep] = pre
            shutil.rmtree(ck, ignore_errors=True)
        full, kept = res[False], res[True]
        rows.append([f"{gb:.2f}", f(full["notice_to_out_s"], 2), f(full["out_to_first_step_s"], 2), f(kept["notice_to_out_s"], 2),
                     f(kept["out_to_first_step_s"], 2), ratio(full["out_to_first_step_s"], kept["out_to_first_step_s"]),
                     ratio(full["total_s"], kept["total_s"])])
        out.append({"state_gb": gb, "full_restart": full, "survivors_kept": kept})
    table("Replacing a preempted node: whole group restarted from the checkpoint vs survivors kept "
          "(sim, 2 nodes x 1 worker, no provisioning delay; speedup = full / kept)",
          ["state GB", "full: notice -> out (s)", "full: out -> first step (s)", "kept: notice -> out (s)",
           "kept: out -> first step (s)", "out -> first step speedup", "notice -> first step speedup"], rows)
    return out


def bench_resize(sizes_gb):
    """An elastic run that shrinks and grows back (sim, 3 nodes x 1 worker,
    time scale 3600): node 0 is alone in zone a, whose spot capacity goes
    and comes back; zone b is full with nodes 1 and 2. The shrink (node 0's
    notice, no replacement: nodes 1 and 2 go on as ranks 0 and 1) and the
    grow (node 0 back: the survivors become ranks 1 and 2 again), with the
    survivors kept in memory under their new ranks against the whole group
    restarted from the checkpoint. Same machine, one size at a time."""
    rows, out = [], []
    for gb in sizes_gb:
        w = int(((gb * 1e9) / 8 / 3) ** 0.5)
        res = {}
        for keep in (False, True):
            ck = tempfile.mkdtemp(dir=WORK)
            drop = 4 + 8 * gb
            back = drop + 10 + 20 * gb
            trace = os.path.join(ck, "a.json")
            with open(trace, "w") as fh:
                json.dump([{"at_s": 0, "capacity": 1}, {"at_s": drop * 3600, "capacity": 0},
                           {"at_s": back * 3600, "capacity": 1}], fh)
            spec = {"name": "resize", "resources": {"nodes": 3, "devices_per_node": 1, "min_nodes": 2},
                    "workload": {"kind": "train", "steps": 100000, "input_dim": w, "hidden": w, "layers": 3, "output_dim": w,
                                 "batch_per_rank": 8, "global_batch": 24, "lr": 0.001, "log_every": 100000},
                    "checkpoint": {"dir": os.path.join(ck, "c"), "every_steps": 100000, "keep": 1},
                    "provider": {"kind": "sim", "cloud": "aws", "offer": "g5.2xlarge", "market": "spot",
                                 "time_scale": 3600, "provisioning_delay_s": 0, "notice_window_s": 30,
                                 "capacity_wait_s": 0.3,
                                 "zones": [{"name": "a", "trace": trace}, {"name": "b", "spot_capacity": 2}]},
                    "recovery": {"heartbeat_interval_s": 0.1, "notice_grace_s": 120, "hang_timeout_s": 600,
                                 "keep_survivors": keep}}
            rid = f"z{time.time_ns()}"
            p, rd = _start(spec, rid)
            first2 = _wait_event(p, rd, "first_step", timeout=900, pred=lambda e: e["attempt"] == 2)
            p.send_signal(signal.SIGINT)
            p.wait(timeout=300)
            with open(os.path.join(rd, "report.json")) as fh:
                rep = json.load(fh)
            evs = _events(rd)
            grow = next(e for e in evs if e["event"] == "group_stopping" and e["reason"] == "resized")
            launched = next(e for e in evs if e["event"] == "attempt_started" and e["attempt"] == 2)
            ready = next(e for e in evs if e["event"] == "rendezvous_complete" and e["attempt"] == 2)
            kept = [e["ranks"] for e in evs if e["event"] == "survivors_kept"]
            started = [e["attempt"] for e in evs if e["event"] == "worker_started"]
            res[keep] = {"shrink": rep["preemptions"][0], "grow_s": _ts(first2) - _ts(grow), "kept": kept,
                         "grow_phases_s": {"stop": _ts(launched) - _ts(grow), "launch_to_ready": _ts(ready) - _ts(launched),
                                           "ready_to_first_step": _ts(first2) - _ts(ready)},
                         "started_per_attempt": [started.count(n) for n in range(3)]}
            shutil.rmtree(ck, ignore_errors=True)
        full, kept = res[False], res[True]
        rows.append([f"{gb:.2f}", f(full["shrink"]["out_to_first_step_s"], 2), f(kept["shrink"]["out_to_first_step_s"], 2),
                     ratio(full["shrink"]["out_to_first_step_s"], kept["shrink"]["out_to_first_step_s"]),
                     f(full["grow_s"], 2), f(kept["grow_s"], 2), ratio(full["grow_s"], kept["grow_s"]),
                     " / ".join(f(x["grow_phases_s"][k], 2) for x in (full, kept) for k in ("stop", "launch_to_ready", "ready_to_first_step")),
                     f"{full['started_per_attempt']} / {kept['started_per_attempt']}"])
        out.append({"state_gb": gb, "full_restart": full, "survivors_kept": kept})
    table("Elastic resize, 3 -> 2 -> 3 nodes with the survivors renumbered: whole group restarted from the checkpoint vs "
          "survivors kept (sim, 3 nodes x 1 worker; speedup = full / kept)",
          ["state GB", "shrink, full: out -> first step (s)", "shrink, kept (s)", "speedup",
           "grow, full: stop -> first step (s)", "grow, kept (s)", "speedup",
           "grow phases, full / kept: stop, launch -> ready, ready -> first step (s)", "workers started per attempt (full / kept)"], rows)
    return out


def bench_week(scale, steps, pace_ms):
    """A simulated week of a 4-node job on p4d.24xlarge spot in AWS (random
    preemptions at the offer's published bracket, and at a stress rate of
    30 a node-month, survivors kept and not), against the same useful work
    on-demand. Time-scaled: every real second of recovery is billed as
    `scale` simulated seconds, so overheads are overstated, not hidden."""
    rows, out = [], []
    cases = [("published (5-10%/month)", None, True), ("stress (30/month)", 30, True), ("stress (30/month)", 30, False)]
    for label, rate, keep in cases:
        ck = tempfile.mkdtemp(dir=WORK)
        rp = {"seed": 11}
        if rate:
            rp["rate_per_month"] = rate
        spec = {"name": "week", "resources": {"nodes": 4, "devices_per_node": 1},
                "workload": {"kind": "train", "steps": steps, "input_dim": 64, "hidden": 256, "layers": 3, "output_dim": 8,
                             "batch_per_rank": 32, "lr": 0.02, "log_every": 1000, "pace_ms": pace_ms},
                "threads_per_worker": 1,
                "checkpoint": {"dir": os.path.join(ck, "c"), "every_steps": 1000, "keep": 2},
                "provider": {"kind": "sim", "cloud": "aws", "offer": "p4d.24xlarge", "market": "spot", "time_scale": scale,
                             "provisioning_delay_s": 300 / scale, "notice_window_s": 2, "random_preemptions": rp},
                "recovery": {"heartbeat_interval_s": 0.1, "max_preemptions": 1000, "keep_survivors": keep}}
        rep = ringmaster(spec)
        pre = rep["preemptions"]
        lost = sum(x.get("total_s") or x["notice_to_out_s"] for x in pre)
        dur = rep["duration_s"]
        c = rep["cost"]
        per = [x["total_s"] for x in pre if x.get("total_s") is not None]
        rows.append([label, "kept" if keep else "full restart", f(dur * scale / 86400, 2), str(len(pre)),
                     f(statistics.median(per) * scale / 60, 1) if per else "-", f(100 * (1 - lost / dur), 1),
                     f(100 * rep["goodput"]["goodput"] if rep.get("goodput") else None, 1),
                     f(c["cost_usd"], 0), f(c["on_demand_equivalent_usd"], 0), f(c["savings_percent"], 1)])
        out.append({"case": label, "keep_survivors": keep, "report": {k: rep[k] for k in ("duration_s", "preemptions", "goodput", "cost")}})
        shutil.rmtree(ck, ignore_errors=True)
    table(f"A simulated week, 4 x p4d.24xlarge spot (AWS, time scale {scale:.0f}: a real second is {scale / 60:.0f} simulated minutes)",
          ["preemption rate", "recovery", "simulated days", "preemptions", "median recovery (sim. min)", "time useful %",
           "goodput (steps) %", "cost $", "on-demand $ (same useful work)", "saved %"], rows)
    return out


def bench_policies(scale, steps, pace_ms):
    """Three answers to spot capacity running out, on the same trace: half
    of the zone's spot capacity (4 -> 2 nodes) gone from simulated hour 24
    to hour 48 of a job that needs about 67 simulated hours on 4 nodes.
    "wait": spot only, waiting up to two days for capacity; "on-demand":
    spot-then-on-demand (the two lost nodes come back on-demand and stay);
    "shrink": spot only, resources.min_nodes 2 (goes on with 2 nodes after
    an hour's wait; grows back at an agreed step once the capacity is back
    and the nodes booted). 4 nodes x 1
    worker billed as p4d.24xlarge, a global batch of 4 blocks (each rank's
    step floor is pace_ms per block it trains, so 2 nodes take twice as
    long a step). Time-scaled like the week: overheads overstated."""
    rows, out = [], []
    hour = 3600.0 / scale
    trace = os.path.join(WORK, "policies-trace.json")
    with open(trace, "w") as fh:
        json.dump([{"at_s": 0, "capacity": 4}, {"at_s": 24 * 3600, "capacity": 2}, {"at_s": 48 * 3600, "capacity": 4}], fh)
    cases = [("wait for spot", "spot", 48 * hour, None),
             ("fall back to on-demand", "spot-then-on-demand", 48 * hour, None),
             ("shrink to 2 nodes and grow back", "spot", 1 * hour, 2)]
    for label, market, wait_s, min_nodes in cases:
        ck = tempfile.mkdtemp(dir=WORK)
        resources = {"nodes": 4, "devices_per_node": 1}
        if min_nodes:
            resources["min_nodes"] = min_nodes
        spec = {"name": "policy", "resources": resources,
                "workload": {"kind": "train", "steps": steps, "input_dim": 64, "hidden": 256, "layers": 3, "output_dim": 8,
                             "batch_per_rank": 32, "global_batch": 128, "lr": 0.02, "log_every": 1000, "pace_ms": pace_ms},
                "threads_per_worker": 1,
                "checkpoint": {"dir": os.path.join(ck, "c"), "every_steps": 1000, "keep": 2},
                "provider": {"kind": "sim", "cloud": "aws", "offer": "p4d.24xlarge", "market": market, "time_scale": scale,
                             "provisioning_delay_s": 300 / scale, "notice_window_s": 2, "capacity_wait_s": wait_s,
                             "zones": [{"name": "us-east-1a", "trace": trace}]},
                "recovery": {"heartbeat_interval_s": 0.1, "max_preemptions": 1000}}
        rep = ringmaster(spec)
        c = rep["cost"]
        worlds = [a.get("world_size") for a in rep["attempts"]]
        rows.append([label, f(rep["duration_s"] * scale / 3600, 1), str(len(rep["preemptions"])), " -> ".join(str(w) for w in worlds),
                     f(100 * rep["goodput"]["goodput"] if rep.get("goodput") else None, 1), f(c["cost_usd"], 0),
                     f(rep["summary"].get("final_loss"), 6)])
        out.append({"policy": label, "report": {k: rep[k] for k in ("duration_s", "preemptions", "goodput", "cost", "attempts")}})
        shutil.rmtree(ck, ignore_errors=True)
    table(f"Spot capacity halved for a day: three policies, 4 x p4d.24xlarge (AWS, time scale {scale:.0f})",
          ["policy", "simulated hours to finish", "preemptions", "world per attempt", "goodput (steps) %", "cost $",
           "final loss"], rows)
    return out


def bench_slurm(repeats):
    """On the local Slurm cluster (scripts/slurm/up.sh): sbatch -> every rank
    joined; Slurm's USR1 (what --signal=B:USR1 sends before the time limit)
    -> checkpoint committed and the launcher out; the requeue -> the first
    step of the resumed run. 2 nodes x 2 tasks, small model."""
    if shutil.which("sbatch") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        print("\n(slurm: no cluster; start one with scripts/slurm/up.sh)")
        return None
    rows, out = [], []
    for i in range(repeats):
        d = tempfile.mkdtemp(dir=WORK)
        spec = {"name": "slb", "resources": {"nodes": 2, "devices_per_node": 2},
                "workload": {"kind": "train", "steps": 3000, "input_dim": 16, "hidden": 32, "layers": 3, "output_dim": 4,
                             "batch_per_rank": 16, "lr": 0.05, "seed": 7, "log_every": 100, "pace_ms": 1},
                "threads_per_worker": 1, "log_dir": os.path.join(d, "runs"),
                "checkpoint": {"dir": os.path.join(d, "ck"), "every_steps": 100, "keep": 2},
                "recovery": {"heartbeat_interval_s": 0.1}, "provider": {"kind": "slurm", "signal_grace_s": 30}}
        job = os.path.join(d, "job.json")
        with open(job, "w") as fh:
            json.dump(spec, fh)
        t0 = time.time()
        r = subprocess.run([RM, "submit", "--scheduler", "slurm", job], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            sys.exit(f"bench: submit failed: {r.stderr}")
        jid = r.stdout.strip()
        rd0 = os.path.join(d, "runs", f"slurm-{jid}-0")
        ready = _wait_event(None, rd0, "rendezvous_complete", timeout=120)
        _wait_event(None, rd0, "first_step", timeout=120)
        time.sleep(1.0)
        t_sig = time.time()
        subprocess.run(["scancel", "--signal=USR1", "--batch", jid], check=True)
        fin = _wait_event(None, rd0, "run_finished", timeout=120)
        rd1 = os.path.join(d, "runs", f"slurm-{jid}-1")
        first = _wait_event(None, rd1, "first_step", timeout=300)
        end = time.time() + 300
        while "JobState=COMPLETED" not in subprocess.run(["scontrol", "show", "job", "-o", jid], capture_output=True, text=True).stdout:
            if time.time() > end:
                sys.exit(f"bench: slurm job {jid} did not complete")
            time.sleep(0.5)
        a, b, c = _ts(ready) - t0, _ts(fin) - t_sig, _ts(first) - _ts(fin)
        rows.append([str(i + 1), f(a, 2), f(b, 2), f(c, 2)])
        out.append({"sbatch_to_ready_s": a, "usr1_to_out_s": b, "requeue_to_first_step_s": c})
    table("Slurm, local two-node cluster (2 nodes x 2 tasks, 0.1 MB of state)",
          ["run", "sbatch -> all ranks joined (s)", "USR1 -> checkpoint committed, launcher out (s)",
           "requeue -> first resumed step (s)"], rows)
    return out


def bench_notice_detection(repeats):
    """From the moment a fake metadata service (tests/fixtures/metadata.py)
    publishes a notice to the moment a worker's watcher has it."""
    rows, out = [], {}
    fake = os.path.join(ROOT, "tests", "fixtures", "metadata.py")
    for cloud in ["aws", "gcp", "azure"]:
        lat = []
        for _ in range(repeats):
            port_file = os.path.join(WORK, f"port-{time.time_ns()}")
            srv = subprocess.Popen([sys.executable, fake, "--cloud", cloud, "--port-file", port_file])
            try:
                end = time.time() + 20
                while not os.path.exists(port_file):
                    if time.time() > end:
                        sys.exit("bench: fake metadata service did not start")
                    time.sleep(0.02)
                base = f"http://127.0.0.1:{open(port_file).read().strip()}"
                src = {"cloud": cloud, "endpoint": base}
                if cloud == "azure":
                    src["vm_name"] = "vm-under-test"
                spec = {"name": "detect", "resources": {"nodes": 1, "devices_per_node": 2},
                        "workload": {"kind": "train", "steps": 1000000, "input_dim": 16, "hidden": 32, "layers": 3,
                                     "output_dim": 4, "batch_per_rank": 16, "log_every": 1000000},
                        "recovery": {"heartbeat_interval_s": 0.5},
                        "notices": {"watch": [src]}}
                p, rd = _start(spec, f"d{time.time_ns()}")
                _wait_event(p, rd, "first_step")
                time.sleep(1.3)  # land at a random point of the poll cycle
                import urllib.request
                urllib.request.urlopen(urllib.request.Request(base + "/_fake/notice", data=b"{}", method="POST")).read()
                got = _wait_event(p, rd, "notice_received")
                from datetime import datetime
                seen = datetime.fromisoformat(got["seen"].replace("Z", "+00:00")).timestamp()
                posted = json.loads(urllib.request.urlopen(base + "/_fake/log").read())["notice_posted"]
                lat.append(seen - posted)
                p.wait(timeout=120)
            finally:
                srv.kill()
                srv.wait()
        out[cloud] = lat
        rows.append([cloud, f(statistics.median(lat), 3), f(max(lat), 3), str(len(lat))])
    table("Notice detection: published by the (fake) metadata service -> seen by the watcher (default 500 ms polling; GCP long-polls)",
          ["cloud", "median s", "max s", "samples"], rows)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-python", default="none")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--only", default="launch,ring,gemm,train,checkpoint,preemption,detection,survivors,resize,week,policies,slurm")
    a = ap.parse_args()
    py = None if a.no_baselines or a.baseline_python == "none" else a.baseline_python
    only = a.only.split(",")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"## Benchmarks ({time.strftime('%Y-%m-%d')})\n\nMachine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; "
          f"baselines: {'torch ' + subprocess.run([py, '-c', 'import torch; print(torch.__version__)'], capture_output=True, text=True).stdout.strip() if py else 'none'}")
    results = {"machine": cpu, "cores": os.cpu_count()}
    if "launch" in only:
        results["launch"] = bench_launch(py, [2, 4, 8, 16], 3 if a.quick else 5)
    if "ring" in only:
        results["ring"] = bench_ring(py, [2, 4], [1 << 20, 4 << 20, 16 << 20, 64 << 20] + ([] if a.quick else [256 << 20]), 3 if a.quick else 5)
    if "gemm" in only:
        results["gemm"] = bench_gemm(py, [1024, 2048] + ([] if a.quick else [4096]), 3 if a.quick else 5)
    if "train" in only:
        results["train"] = bench_train(py, 10 if a.quick else 30)
    if "checkpoint" in only:
        results["checkpoint"] = bench_checkpoint(py, 256 if a.quick else 1024)
    if "preemption" in only:
        results["preemption"] = bench_preemption([0.25] if a.quick else [0.25, 1.0, 2.0])
    if "detection" in only:
        results["detection"] = bench_notice_detection(2 if a.quick else 5)
    if "slurm" in only:
        results["slurm"] = bench_slurm(2 if a.quick else 3)
    if "survivors" in only:
        results["survivors"] = bench_survivors([0.25] if a.quick else [0.25, 1.0])
    if "resize" in only:
        results["resize"] = bench_resize([0.1] if a.quick else [0.1, 0.5])
    if "week" in only:
        # A week in 150 s of steps (30 s with --quick: a day and a bit).
        results["week"] = bench_week(4032.0, 6000 if a.quick else 30000, 5)
    if "policies" in only:
        # About 67 simulated hours on 4 nodes: 60 s of 5 ms steps.
        results["policies"] = bench_policies(4032.0, 3000 if a.quick else 12000, 5)
    os.makedirs(os.path.join(ROOT, ".bench"), exist_ok=True)
    with open(os.path.join(ROOT, ".bench", "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The cost of `ringmaster.report()` per step, on this machine: calls per
second with a real receiving socket (as the worker binds it), against two
baselines measured in the same run: an empty Python function call, and the
call without ringmaster (a no-op). A receiver thread drains the socket as
the worker's channel thread does."""
import os
import socket
import sys
import threading
import time

name = "ringmaster-bench-%d" % os.getpid()
rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
rx.bind("\0" + name)
rx.settimeout(0.2)
got = [0]
stop = threading.Event()


def drain():
    while not stop.is_set():
        try:
            rx.recv(256)
            got[0] += 1
        except socket.timeout:
            pass


t = threading.Thread(target=drain)
t.start()
os.environ["RINGMASTER_CHANNEL"] = "@" + name
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import ringmaster  # noqa: E402

N = int(os.environ.get("N", "200000"))


def rate(f):
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(N):
            f(i)
        best = max(best, N / (time.perf_counter() - t0))
    return best


def empty(i):
    pass


def rep(i):
    ringmaster.report(i, loss=0.5, samples=64, total=N)


base = rate(empty)
real = rate(rep)
ringmaster._sock = None  # as without ringmaster
noop = rate(rep)
stop.set()
t.join()
print(f"empty call:            {base:12.0f} calls/s ({1e6 / base:6.2f} us)")
print(f"report(), no channel:  {noop:12.0f} calls/s ({1e6 / noop:6.2f} us)  {base / noop:5.1f}x an empty call")
print(f"report() to a socket:  {real:12.0f} calls/s ({1e6 / real:6.2f} us)  {base / real:5.1f}x an empty call")
print(f"datagrams received: {got[0]} of {3 * N}")

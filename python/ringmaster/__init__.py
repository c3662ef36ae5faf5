"""Talk to the ringmaster launcher from your own training program.

Standard library only. Without ringmaster (plain `python`, torchrun) every
call is a no-op that returns sane values, so one script runs everywhere.

    import ringmaster
    for step in range(start, total):
        loss = train_step(...)
        if ringmaster.report(step + 1, loss=loss, samples=batch, total=total):
            save_checkpoint(step + 1)    # every rank stops after this step
            break

`report` sends one datagram to this rank's worker (RINGMASTER_CHANNEL) and
never waits: it feeds the launcher's progress display, hang detection by
progress (the rank that stopped advancing is named) and goodput. It returns
True at the agreed stop step after a preemption notice: the launcher picks
one step from the ranks' reports, and every rank's call returns True at that
step and at no other. `notice` reads the notice file
(RINGMASTER_NOTICE_FILE) the worker writes before it signals the program
(`notices.program_signal`, SIGTERM by default; set it to "none" when the
program stops through `report` alone).
"""

import json
import os
import socket
import time

__all__ = ["report", "notice", "stop_step", "enabled"]

_channel = os.environ.get("RINGMASTER_CHANNEL", "")
_notice_file = os.environ.get("RINGMASTER_NOTICE_FILE", "")
_sock = None
_addr = None
if _channel.startswith("@"):
    try:
        _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _sock.setblocking(False)
        _addr = "\0" + _channel[1:]
    except OSError:
        _sock = None


def enabled():
    """Whether this program runs under ringmaster (its reports go somewhere)."""
    return _sock is not None


def _figure(v, fmt):
    return "-" if v is None else fmt % v


def report(step, loss=None, samples=None, total=None):
    """This rank finished `step` (steps count from 1): its loss, the samples
    it processed in the step, and the steps the run will take (`total`, once
    is enough). Returns True when this is the agreed stop step after a
    notice (save, then exit 0); False otherwise. Costs a few microseconds;
    never blocks, never raises."""
    if _sock is None:
        return False
    msg = "s %d %s %s %s" % (
        step,
        _figure(loss, "%.9g"),
        _figure(samples, "%d"),
        _figure(total, "%d"),
    )
    try:
        _sock.sendto(msg.encode(), _addr)
    except OSError:
        pass
    stop = stop_step()
    return stop is not None and step >= stop


_next_look = 0.0


def stop_step():
    """The step every rank stops after, once a notice named one (None
    before). Looks at the notice file at most every 20 ms."""
    global _next_look, _notice
    if _notice is not None and _notice.get("stop_step") is not None:
        return _notice["stop_step"]
    now = time.monotonic()
    if now < _next_look:
        return None
    _next_look = now + 0.02
    _notice = None  # the file is rewritten when the stop step comes
    n = notice()
    return n.get("stop_step") if n else None


_notice = None


def notice():
    """The preemption notice this rank was told of, as a dict (source,
    deadline_unix_s, deadline, signal, stop_step), or None. Cheap enough to
    call every step (one failed stat until the file exists)."""
    global _notice
    if _notice is not None or not _notice_file:
        return _notice
    try:
        with open(_notice_file) as f:
            _notice = json.load(f)
    except (OSError, ValueError):
        pass
    return _notice

"""Talk to the ringmaster launcher from your own training program.

Standard library only. Without ringmaster (plain `python`, torchrun) every
call is a no-op that returns sane values, so one script runs everywhere.

    import ringmaster
    for step in range(start, total):
        loss = train_step(...)
        ringmaster.report(step + 1, loss=loss, samples=batch, total=total)
        if ringmaster.notice():          # a preemption notice came
            save_checkpoint(step + 1)
            break

`report` sends one datagram to this rank's worker (RINGMASTER_CHANNEL) and
never waits: it feeds the launcher's progress display, hang detection by
progress (the rank that stopped advancing is named) and goodput. `notice`
reads the notice file (RINGMASTER_NOTICE_FILE) the worker writes before it
signals the program (`notices.program_signal`, SIGTERM by default).
"""

import json
import os
import socket

__all__ = ["report", "notice", "enabled"]

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
    is enough). Costs a few microseconds; never blocks, never raises."""
    if _sock is None:
        return
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

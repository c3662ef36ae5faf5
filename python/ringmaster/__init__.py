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

Checkpoints the program writes itself (torch.save, torch.distributed
.checkpoint, anything) go into `checkpoint_dir(step)`, one folder per step
shared by all ranks (name files by rank); once this rank's files are
written, `commit(step)`. When every rank committed a step, the launcher
lists the files with their checksums in a manifest and renames the folder
into place; only then does the checkpoint count (for `checkpoint.keep`,
the report and resume). An attempt that resumes (a restart after a
failure, `ringmaster run --resume`, a Slurm requeue, a replacement node)
finds the newest committed one in `resume()`:

    start = 0
    if ringmaster.resume():
        start, folder = ringmaster.resume()
        state = torch.load(os.path.join(folder, f"rank-{rank}.pt"))
    ...
        if stop or ringmaster.checkpoint_due(step + 1):
            folder = ringmaster.checkpoint_dir(step + 1)
            torch.save(state, os.path.join(folder, f"rank-{rank}.pt"))
            ringmaster.commit(step + 1)

An elastic run (`resources.min_nodes`) may resume in a world of another
size: fewer nodes when spot capacity is gone, all of them again when it is
back. `world_changed()` says so (`resume_world_size()` is the world that
wrote the checkpoint; WORLD_SIZE and RANK are this attempt's): a program
whose checkpoint is per rank reshards it (torch.distributed.checkpoint does
on load); one whose ranks hold the same state loads it as it is.
"""

import json
import os
import signal
import socket
import time

__all__ = [
    "report",
    "notice",
    "stop_step",
    "enabled",
    "checkpoint_dir",
    "checkpoint_due",
    "commit",
    "resume",
    "resume_world_size",
    "world_changed",
]

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


def _scheduler_sigterm(signum, frame):
    """Slurm sends SIGTERM to every process of the job (a requeue, a
    preemption, the end of the time limit); this rank's worker takes it as a
    preemption notice and the launcher's agreed stop step reaches the
    program through `report`, so the program runs on to that step instead
    of dying here."""


# Where the scheduler signals every process (the worker's contract says
# so), keep a program that set no SIGTERM handler of its own alive until
# the agreed stop step. A handler the program sets later wins.
if _sock is not None and os.environ.get("RINGMASTER_SIGTERM_IS_NOTICE") == "1":
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _scheduler_sigterm)
    except (ValueError, OSError):  # not the main thread
        pass


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


_checkpoint_root = os.environ.get("RINGMASTER_CHECKPOINT_DIR", "")
try:
    _every = int(os.environ.get("RINGMASTER_CHECKPOINT_EVERY", "0"))
except ValueError:
    _every = 0


def checkpoint_dir(step, root="checkpoints"):
    """The folder this step's checkpoint goes into (created; every rank
    gets the same one, so name files by rank or let
    torch.distributed.checkpoint name them). Under ringmaster it is
    `<checkpoint.dir>/step-<step>.tmp`, which becomes `step-<step>` once
    every rank committed; without ringmaster, `<root>/step-<step>`."""
    base = _checkpoint_root or root
    name = "step-%010d" % step
    path = os.path.join(base, name + ".tmp" if _checkpoint_root else name)
    os.makedirs(path, exist_ok=True)
    return path


def checkpoint_due(step):
    """Whether the job's cadence (`checkpoint.every_steps`) asks for a
    checkpoint after `step` (False without one, or without ringmaster)."""
    return _every > 0 and step % _every == 0


def commit(step):
    """This rank's files of `step`'s checkpoint are fully written (sync
    them first: `f.flush(); os.fsync(f.fileno())`, or let the launcher
    sync them when it commits the folder). Returns True when the worker
    was told; False without ringmaster. Waits up to 5 s for room in the
    worker's queue, unlike `report`: a commit is never dropped."""
    if _sock is None or not _checkpoint_root:
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.settimeout(5.0)
        s.sendto(("c %d" % step).encode(), _addr)
        return True
    except OSError:
        return False
    finally:
        s.close()


def resume():
    """(step, folder) of the newest committed checkpoint this attempt
    resumes from, or None (a fresh start, or no ringmaster)."""
    step = os.environ.get("RINGMASTER_RESUME_STEP")
    folder = os.environ.get("RINGMASTER_RESUME_DIR")
    if step is None or folder is None:
        return None
    try:
        return int(step), folder
    except ValueError:
        return None


def resume_world_size():
    """The world size that wrote the checkpoint `resume()` names, or None."""
    if resume() is None:
        return None
    try:
        return int(os.environ["RINGMASTER_RESUME_WORLD_SIZE"])
    except (KeyError, ValueError):
        return None


def world_changed():
    """True when this attempt resumes from a checkpoint that a world of
    another size wrote (an elastic run shrank or grew)."""
    was = resume_world_size()
    if was is None:
        return False
    try:
        return was != int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False

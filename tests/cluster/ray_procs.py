"""The processes of a Ray node that ``ray start`` daemonised, found and stopped
by what their command lines name: its temp dir or GCS port. Never
``ray stop``, which stops every Ray on the machine (the session's too)."""
from __future__ import annotations

import os
import re
import signal
import time


def _processes() -> dict[int, tuple[int, str]]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out[int(d)] = (ppid, cmd)
    return out


def stop_ray(temp_dir: str, gcs_port: int | None = None) -> None:
    """SIGTERM, then SIGKILL, to the processes whose command lines name this
    temp dir (or this GCS port, when it is the machine's only Ray on it) and
    their children."""
    procs = _processes()
    mark = re.compile(re.escape(temp_dir) + ("" if gcs_port is None else rf"|:{gcs_port}\b"))
    ours = {pid for pid, (_, cmd) in procs.items() if mark.search(cmd)} - {os.getpid()}
    while True:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in ours} - ours - {os.getpid()}
        if not more:
            break
        ours |= more
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 2
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(map(_alive, ours)):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

"""The cluster's daemons: started in their own session, recorded by PID and kernel start
time (so a reused PID is never signalled), stopped by that PID."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .common import LOGS, PIDS, REPO, HarnessError, say


@dataclass
class Proc:
    name: str
    pid: int
    start: str
    log: str

    @property
    def pidfile(self) -> Path:
        return PIDS / f"{self.name}.json"

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of a PID, which tells a reused PID from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def recorded(name: str) -> Proc | None:
    path = PIDS / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return Proc(**data)


def running(name: str) -> bool:
    proc = recorded(name)
    return proc is not None and proc.alive()


def spawn(name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
    """Start a daemon in its own session, log to .cluster/logs, record its PID."""
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    with log.open("ab") as out:
        out.write(f"\n--- {datetime.datetime.now():%F %T} {shlex.join(cmd)}\n".encode())
        out.flush()
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    start = None
    for _ in range(50):
        start = proc_start_time(popen.pid)
        if start:
            break
        time.sleep(0.01)
    if start is None:
        raise HarnessError(f"{name} exited at once; log: {log}\n{tail(log)}")
    proc = Proc(name=name, pid=popen.pid, start=start, log=str(log))
    proc.pidfile.write_text(json.dumps(proc.__dict__))
    say(f"{name}: started, pid {popen.pid}, log {rel(log)}")
    return proc


def stop(name: str, timeout: float = 15.0) -> None:
    """SIGTERM the recorded PID, then SIGKILL after the timeout."""
    proc = recorded(name)
    if proc is None:
        return
    if proc.alive():
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.alive() and time.monotonic() < deadline:
            reap(proc.pid)
            time.sleep(0.1)
        if proc.alive():
            say(f"{name}: did not stop in {timeout:.0f}s, killing pid {proc.pid}")
            os.kill(proc.pid, signal.SIGKILL)
            while proc.alive():
                reap(proc.pid)
                time.sleep(0.05)
        say(f"{name}: stopped (pid {proc.pid})")
    proc.pidfile.unlink(missing_ok=True)


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: Path | str, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(REPO))
    return str(path)


def wait_for(name: str, check: Callable[[], bool], timeout: float, what: str = "ready") -> None:
    """Poll until check() is true; on timeout or process death, show its log."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        proc = recorded(name)
        if proc is not None and not proc.alive():
            raise HarnessError(
                f"{name} exited; last lines of {proc.log}:\n{tail(proc.log)}\n"
                f"fix the cause, then run `make cluster-down cluster-up`"
            )
        with contextlib.suppress(Exception):
            if check():
                say(f"{name}: {what} after {time.monotonic() - start:.1f}s")
                return
        time.sleep(0.25)
    proc = recorded(name)
    log = proc.log if proc else str(LOGS / f"{name}.log")
    raise HarnessError(f"{name} not {what} after {timeout:.0f}s; last lines of {log}:\n{tail(log)}")

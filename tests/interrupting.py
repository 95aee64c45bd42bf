"""Killing a real command-line process at a chosen point, from outside, with no hook in the code.

Two ways: :func:`kill_when`, which SIGKILLs the process (and every process it started) as soon as
a condition on the fund's records or files holds, and :func:`killed_at`, which runs it under
``strace`` and has the kernel deliver SIGKILL at the first system call that touches a given
path (exactly there: the call itself never happens).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "fhe_toolkit.cli"]


def start(*args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    """The command line, started in a process group of its own (its worker processes too)."""
    return subprocess.Popen(
        [*CLI, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    """Wait for a started command; its output and exit status."""
    out, err = process.communicate(timeout=1200)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def wait_until(process: subprocess.Popen[str], condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (checked every 20 ms); fails if the process ends first."""
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the command ended (status {process.returncode}) first:\n{out}{err}")
        time.sleep(0.02)


def kill_when(process: subprocess.Popen[str], condition: Callable[[], bool]) -> None:
    """SIGKILL the process group of ``process`` (its worker processes too) as soon as
    ``condition()`` holds."""
    wait_until(process, condition)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)


@contextlib.contextmanager
def paused(process: subprocess.Popen[str]) -> Iterator[None]:
    """The process group of ``process`` stopped (SIGSTOP) for the duration: it holds whatever
    it holds (a lock) and does nothing, until it is continued (SIGCONT)."""
    os.killpg(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGCONT)


def killed_at(
    path: Path, calls: str, *args: str | Path, cwd: Path, nth: int = 1
) -> subprocess.CompletedProcess[str]:
    """Run the command line under ``strace``, which has the kernel SIGKILL it at the ``nth`` of
    the system calls ``calls`` (e.g. ``openat``, or ``%file`` for any) that names ``path``, in
    the command's own process (its worker processes are not traced, and are killed after it).
    Give every path to the command absolute: ``strace`` compares them as written. Skips the
    test where ``strace`` is missing or may not trace."""
    tracer = shutil.which("strace")
    if tracer is None:
        pytest.skip("strace is not installed")
    if subprocess.run([tracer, "-q", "-o", os.devnull, "true"], check=False).returncode != 0:
        pytest.skip("strace cannot trace here (ptrace is not permitted)")
    process = subprocess.Popen(
        [tracer, "-q", "-o", os.devnull, "-P", str(path), "-e", f"trace={calls}",
         "-e", f"inject={calls}:signal=KILL:when={nth}", *CLI, *map(str, args)],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    result = finish(process)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # worker processes it left
    assert result.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), (
        f"not killed at {path} (status {result.returncode}):\n{result.stdout}{result.stderr}"
    )
    return result

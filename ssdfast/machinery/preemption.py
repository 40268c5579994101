"""Stopping a training run without losing it: stop signals, and the ranks' agreement on when to stop.

A cluster stops a job with SIGTERM (SLURM, Kubernetes, torchrun), often after SIGUSR1 as a warning
(SLURM's --signal); a person stops it with Ctrl-C. All three ask for the same thing here: finish the
current step, write last.pt with the position inside the epoch, exit with EXIT_STOPPED (exit_codes.py).
A second Ctrl-C aborts at once (the previous checkpoint is intact: checkpoints are written atomically).
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # noqa: F401  (its exit hook must be registered before ours: atexit runs LIFO)
import os
import signal
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """Turns SIGTERM, SIGINT and SIGUSR1 into a flag the training loop reads after each step.

    After the first SIGINT, SIGINT goes back to the default action: a second Ctrl-C ends the process
    at once, even inside a long C++ call (checkpoints are atomic, so the previous one is intact).
    Use as a context manager: the previous handlers come back on exit. Only the main thread can
    install handlers; elsewhere (a test calling main() from a thread) `requested` stays None."""

    def __init__(self):
        self.requested: str | None = None  # the name of the first signal received
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # the next Ctrl-C kills at once
        if self.requested is None:
            self.requested = signal.Signals(signum).name
            # os.write, not print: a handler runs between any two bytecodes, and print can raise
            # (a closed pipe, `| tee` killed by the same Ctrl-C) where the main code cannot handle it.
            note = (
                f"\n{self.requested} received: finishing the current step, then saving last.pt"
                + (" (Ctrl-C again to abort at once)" if signum == signal.SIGINT else "")
                + "\n"
            )
            try:
                os.write(2, note.encode())
            except OSError:
                pass

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def exiting(self) -> None:
        """The run stopped and saved: ignore SIGTERM/SIGUSR1 until the process ends, so that torchrun's
        SIGTERM to the ranks still exiting (sent as soon as the first one leaves) does not turn their
        EXIT_STOPPED into a kill. Ctrl-C still aborts."""
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            if sig in self._previous:
                signal.signal(sig, signal.SIG_IGN)
                del self._previous[sig]

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals_in_workers(worker_id: int) -> None:
    """DataLoader worker_init_fn: SLURM signals every process of the job, torchrun the whole process
    group, a terminal Ctrl-C the foreground group, so the loader's workers get the stop signal too.
    They must not die of it (the main process would fail with "DataLoader worker killed by signal"
    in the middle of the step it wants to finish); the loader ends them when the run ends."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def end_workers_at_exit() -> None:
    """Make sure the loader's workers end when this (the main) process ends, however it ends.

    A run that ends normally shuts its workers down through the DataLoader. A failure does not: the
    traceback keeps the loaders alive until the interpreter exits, where DataLoader's own shutdown is
    off and multiprocessing's exit hook ends daemonic children with SIGTERM and then waits for them,
    forever, since the workers ignore SIGTERM (above, on purpose). So, registered once and run before
    that hook: every daemonic child (our workers: children multiprocessing would end at exit anyway)
    gets SIGTERM, up to EXIT_GRACE_S to go, then SIGKILL, whatever its signal handling. Costs nothing
    when no worker is left; at most EXIT_GRACE_S on a failure.

    Each call moves it to the end of the atexit list, so it runs before the exit hooks of libraries imported
    earlier: NVIDIA DALI's (`_unload_dali`) collects garbage, and a DataLoader iterator collected there joins
    its workers, which never come: a --dali run stopped by SIGTERM would hang at exit."""
    atexit.unregister(_end_daemonic_children)
    atexit.register(_end_daemonic_children)


EXIT_GRACE_S = 1.0


def _end_daemonic_children() -> None:
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if not children:
        return
    # DataLoader's SIGCHLD handler would raise "worker killed by signal" here, in the middle of the loop.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.terminate()
    deadline = time.monotonic() + EXIT_GRACE_S
    for child in children:
        child.join(max(deadline - time.monotonic(), 0))
        if child.is_alive():
            child.kill()
            child.join()


class StopAgreement:
    """Every rank must stop after the same step, or the ones still training wait in DDP's all-reduce.
    After each step the ranks agree through a gloo group (CPU tensors: no GPU sync; one small network
    round trip per step, which keeps the ranks' CPUs in step) on whether any of them was asked to stop."""

    def __init__(self, timeout: timedelta | None = None):
        self.group = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # The default group already is gloo on CPU; with NCCL a CPU side group carries the flag
            # (with the same timeout: a hung rank must not hold the others longer than --dist-timeout).
            self.group = (
                dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
            )

    def any(self, local: bool) -> bool:
        """True on every rank if `local` is True on any rank (a collective: every rank must call it)."""
        if self.group is None:
            return local
        flag = torch.tensor([int(local)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    def same(self, values: list[int]) -> bool:
        """Do all ranks hold the same integers (e.g. the epoch and iteration they resume at)?"""
        if self.group is None:
            return True
        high, low = torch.tensor(values), -torch.tensor(values)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.group)
        dist.all_reduce(low, op=dist.ReduceOp.MAX, group=self.group)
        return bool((high == -low).all())


def process_group_timeout(seconds: float) -> timedelta:
    """The bound on any collective: a rank that died outside torchrun's watch, or hangs, ends the job
    after this long instead of never (NCCL also needs async error handling, on by default in torch 2.x)."""
    if seconds <= 0:
        raise ValueError(f"--dist-timeout must be positive, got {seconds}")
    return timedelta(seconds=seconds)

"""Stopping a training run without losing it: signals, agreement between ranks, checkpoint timing, exit codes.

A cluster stops a job with SIGTERM (SLURM, Kubernetes, torchrun), often after SIGUSR1 as a warning
(SLURM's --signal); a person stops it with Ctrl-C. All three ask for the same thing here: finish the
current step, write last.pt with the position inside the epoch, exit with EXIT_STOPPED. A second
Ctrl-C aborts at once (the previous checkpoint is intact: checkpoints are written atomically).
"""
from __future__ import annotations

import re
import signal
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

# Exit codes of tools/train.py (README "Stop and resume" lists them).
EXIT_DONE = 0
EXIT_ERROR = 1  # a user error or a checkpoint that could not be written (one `error:` line)
EXIT_NON_FINITE = 2  # the loss became NaN/inf; last.pt is the one before
EXIT_PEER_LOST = 3  # another rank died or hung past --dist-timeout; last.pt is intact
EXIT_STOPPED = 75  # stopped by SIGTERM/SIGINT/SIGUSR1 after writing last.pt (75 = EX_TEMPFAIL: "try again")
EXIT_ABORTED = 130  # a second Ctrl-C: stopped at once, last.pt is the previous one

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """Turns SIGTERM, SIGINT and SIGUSR1 into a flag the training loop reads after each step.

    A second SIGINT raises KeyboardInterrupt at once (the user insists). Use as a context manager:
    the previous handlers come back on exit. Only the main thread can install handlers; elsewhere
    (e.g. a test calling main() from a thread) this does nothing and `requested` stays None."""

    def __init__(self):
        self.requested: str | None = None  # the name of the first signal received
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.requested == "SIGINT":
            raise KeyboardInterrupt
        if self.requested is None:
            self.requested = signal.Signals(signum).name
            print(f"\n{self.requested} received: finishing the current step, then saving last.pt"
                  + (" (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""), flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def exiting(self) -> None:
        """The run stopped and saved: ignore these signals until the process ends, so that torchrun's
        SIGTERM to the ranks still exiting (sent as soon as the first one leaves) does not turn their
        EXIT_STOPPED into a kill."""
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StopAgreement:
    """Every rank must stop after the same step, or the ones still training wait forever in DDP's
    all-reduce. After each step the ranks agree through a gloo group (CPU tensors: no GPU sync,
    one small network round trip per step) on whether any of them was asked to stop."""

    def __init__(self):
        self.group = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # The default group already is gloo on CPU; with NCCL a CPU side group carries the flag.
            self.group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD

    def any(self, local: bool) -> bool:
        """True on every rank if `local` is True on any rank (a collective: every rank must call it)."""
        if self.group is None:
            return local
        flag = torch.tensor([int(local)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())


class CheckpointSchedule:
    """When to write a mid-epoch last.pt: every N iterations ("500") or every so much wall time
    ("10m", "90s", "1h"); "0" never (epoch ends only). A save costs a host sync and the write."""

    def __init__(self, spec: str):
        self.spec = spec
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(spec))
        if not match or (not match.group(2) and "." in match.group(1)):
            raise ValueError(f"--checkpoint-every {spec!r}: give iterations (e.g. 500) or a time (e.g. 10m, 90s, 1h)")
        value, unit = float(match.group(1)), match.group(2)
        self.iterations = int(value) if not unit else None
        self.seconds = value * {"s": 1, "m": 60, "h": 3600}[unit] if unit else None
        self.last = time.monotonic()

    def due(self, iteration: int) -> bool:
        """Is a checkpoint due after `iteration` (0-based, within the epoch)?"""
        if self.iterations is not None:
            return self.iterations > 0 and (iteration + 1) % self.iterations == 0
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def saved(self) -> None:
        self.last = time.monotonic()


def process_group_timeout(seconds: float) -> timedelta:
    """The bound on any collective: a rank that died outside torchrun's watch, or hangs, ends the job
    after this long instead of never (NCCL also needs async error handling, on by default in torch 2.x)."""
    if seconds <= 0:
        raise ValueError(f"--dist-timeout must be positive, got {seconds}")
    return timedelta(seconds=seconds)

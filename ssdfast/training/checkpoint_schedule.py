"""When a run writes last.pt inside an epoch (at epoch ends it always does)."""

from __future__ import annotations

import re
import time


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

"""Runs every query on its own interval, in its own thread, until asked to stop.

A thread per query keeps a slow or failing query from delaying the others. Each query
starts at a random offset within its first interval (capped at a few seconds, so the
sidecar becomes ready quickly) and then keeps that phase, which spreads the load on
Prometheus the way Prometheus spreads its own scrapes.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Sequence

from sidecar.logs import kv
from sidecar.scoring import QueryRunner
from sidecar.snapshot import SnapshotStore

log = logging.getLogger(__name__)

#: Largest start offset, so that /-/ready turns 200 soon after start even with long intervals.
MAX_START_JITTER = 5.0


class Scheduler:
    def __init__(
        self,
        runners: Sequence[QueryRunner],
        store: SnapshotStore,
        *,
        stop: threading.Event | None = None,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runners = list(runners)
        self.store = store
        self.stop_event = stop or threading.Event()
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._threads: list[threading.Thread] = []

    def start(self) -> "Scheduler":
        for runner in self.runners:
            offset = self._rng.uniform(0, min(runner.spec.interval, MAX_START_JITTER))
            t = threading.Thread(target=self._loop, args=(runner, offset), name=f"query:{runner.spec.name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _loop(self, runner: QueryRunner, offset: float) -> None:
        interval = runner.spec.interval
        next_run = self._monotonic() + offset
        while not self.stop_event.wait(max(0.0, next_run - self._monotonic())):
            self.store.publish(runner.run())
            next_run += interval
            behind = self._monotonic() - next_run
            if behind > 0:
                # The cycle took longer than the interval: skip the missed runs, keep the phase.
                skipped = int(behind // interval) + 1
                log.warning("cycle slower than interval", extra=kv(query=runner.spec.name, skipped_runs=skipped))
                next_run += skipped * interval

    def stop(self, timeout: float = 10.0) -> None:
        """Signal every loop and wait (bounded) for cycles in progress to finish."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.warning("stopping with cycles still running", extra=kv(threads=",".join(stuck)))

"""The scheduler: each query on its own interval, a slow one never blocks the others."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from sidecar.scheduler import Scheduler
from sidecar.snapshot import QueryView, SnapshotStore


@dataclass
class Spec:
    name: str
    interval: float


class TimedRunner:
    """Stands in for a QueryRunner: records when it ran, takes ``cost`` seconds per cycle."""

    def __init__(self, name, interval, cost=0.0):
        self.spec = Spec(name, interval)
        self.cost = cost
        self.runs: list[float] = []

    def run(self):
        self.runs.append(time.monotonic())
        time.sleep(self.cost)
        return QueryView(self.spec.name, "up", "x", self.spec.interval, last_run=time.time())


def test_a_slow_query_does_not_delay_a_fast_one():
    fast, slow = TimedRunner("fast", 0.1), TimedRunner("slow", 0.1, cost=1.5)
    store = SnapshotStore([QueryView("fast", "up", "x", 0.1), QueryView("slow", "up", "x", 0.1)])
    sched = Scheduler([fast, slow], store, rng=random.Random(0)).start()
    time.sleep(1.2)
    sched.stop(timeout=5)
    assert len(fast.runs) >= 8
    assert len(slow.runs) == 1
    gaps = [b - a for a, b in zip(fast.runs, fast.runs[1:])]
    assert max(gaps) < 0.3


def test_cycles_keep_their_phase_and_skip_missed_runs():
    r = TimedRunner("q", 0.2, cost=0.45)
    store = SnapshotStore([QueryView("q", "up", "x", 0.2)])
    sched = Scheduler([r], store, rng=random.Random(0)).start()
    time.sleep(1.5)
    sched.stop(timeout=5)
    gaps = [b - a for a, b in zip(r.runs, r.runs[1:])]
    # A 0.45 s cycle on a 0.2 s interval runs every 0.6 s (the next slot), not back to back.
    assert gaps and all(0.55 < g < 0.75 for g in gaps)


def test_start_is_jittered_within_the_first_interval():
    runners = [TimedRunner(f"q{i}", 1.0) for i in range(6)]
    store = SnapshotStore([QueryView(r.spec.name, "up", "x", 1.0) for r in runners])
    t0 = time.monotonic()
    sched = Scheduler(runners, store, rng=random.Random(3)).start()
    time.sleep(1.05)
    sched.stop(timeout=5)
    starts = sorted(r.runs[0] - t0 for r in runners)
    assert all(0 <= s <= 1.05 for s in starts)
    assert starts[-1] - starts[0] > 0.2  # not all at once


def test_stop_wakes_sleeping_loops_at_once_and_publishes_results():
    r = TimedRunner("q", 3600)
    store = SnapshotStore([QueryView("q", "up", "x", 3600)])
    sched = Scheduler([r], store, rng=random.Random(1))
    sched.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    sched.stop(timeout=5)
    assert time.monotonic() - t0 < 1
    assert not any(t.is_alive() for t in threading.enumerate() if t.name == "query:q")

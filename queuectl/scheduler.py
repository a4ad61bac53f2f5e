"""The scheduler loop (SPEC section 11): ticks the schedules of one store until stopped.

Each `worker run` (its supervisor when it has one) runs a Scheduler in a thread, with
its own store connection, so schedules keep ticking while every worker is busy. Any
number of schedulers may run on one store: `Queue.tick` creates each slot's run once.
The same thread prunes ended jobs past their keep_*_days (SPEC 14), a batch per state a
minute, so a queue that runs for a year does not fill its disk.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from .core import Queue
from .models import utcnow
from .runner import stderr_log
from .store import Store, open_store

Clock = Callable[[], datetime]
Log = Callable[[str], None]
# Re-read the schedules at least this often, whatever the next slot: a wall clock that
# was stepped, and a writer that sent no change notification, are noticed within it.
RESCAN_S = 5.0
CHANGE_CHECK_S = 0.5  # a new or resumed schedule is picked up this soon
ERROR_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)  # a failing tick is retried ever slower, never dropped
JOIN_TIMEOUT_S = 10.0
PRUNE_EVERY = timedelta(minutes=1)
PRUNE_BATCHES = 10  # per state and pass: 10 x 200 a minute is 2,880,000 jobs a day
SWEEP_EVERY = timedelta(hours=1)  # reads the whole logs directory: rarely


class Scheduler:
    """Ticks every schedule of the store at its slots, until stop() is called."""

    def __init__(self, url: str, *, clock: Clock = utcnow, log: Log = stderr_log) -> None:
        self.url = url
        self.clock = clock
        self.log = log
        self._stop = threading.Event()
        self._store: Store | None = None
        self._prune_at: datetime | None = None  # the first pass prunes
        self._sweep_at: datetime | None = None

    def stop(self) -> None:
        """Return from run() at once (after the tick in progress). Safe from a signal handler."""
        self._stop.set()

    def run_once(self) -> float:
        """Tick once; return how many seconds to sleep before the next tick.

        Opens the store on first use (in the thread that runs the loop).
        """
        self._store = self._store or open_store(self.url, durable=False)
        queue = Queue(self._store, clock=self.clock)
        for ticked in queue.tick():
            for run_id in ticked.replaced:
                self.log(f"schedule {ticked.schedule_id}: canceled run {run_id} (overlap: replace)")
            for run_id in ticked.created:
                self.log(f"schedule {ticked.schedule_id}: created run {run_id}")
            if ticked.missed:
                self.log(f"schedule {ticked.schedule_id}: {ticked.missed} slot(s) missed")
        self._prune(queue)
        next_tick = queue.next_tick_at()
        if next_tick is None:
            return RESCAN_S
        return min(RESCAN_S, max(0.0, (next_tick - self.clock()).total_seconds()))

    def _prune(self, queue: Queue) -> None:
        """Once a minute, delete a few batches of each state's jobs past their keep_*_days; once
        an hour, the log files on this host of jobs deleted elsewhere."""
        now = self.clock()
        if self._prune_at is not None and now < self._prune_at:
            return
        self._prune_at = now + PRUNE_EVERY
        pruned = queue.prune(max_batches=PRUNE_BATCHES)
        if any(pruned.values()):
            counts = ", ".join(f"{state.value} {len(ids)}" for state, ids in pruned.items() if ids)
            self.log(f"pruned ended jobs past their keep_*_days: {counts}")
        if self._sweep_at is None or now >= self._sweep_at:
            self._sweep_at = now + SWEEP_EVERY
            if swept := queue.sweep_logs():
                self.log(f"deleted {len(swept)} log file(s) of jobs no longer in the store")

    def run(self) -> None:
        """Tick at every slot until stopped. A failing tick is logged and tried again."""
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    wait_s = self.run_once()
                    failures = 0
                except Exception as exc:  # a busy or unreachable store: the loop goes on
                    wait_s = ERROR_BACKOFF_S[min(failures, len(ERROR_BACKOFF_S) - 1)]
                    failures += 1
                    self.log(f"scheduler: tick failed ({exc}); trying again in {wait_s:g} s")
                self._sleep(wait_s)
        finally:
            self.close()

    def close(self) -> None:
        """Close the scheduler's store connection (run() does, on its way out)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def _sleep(self, wait_s: float) -> None:
        """Sleep `wait_s`, less when stopped or when another connection commits a change."""
        deadline = time.monotonic() + wait_s
        while (remaining := deadline - time.monotonic()) > 0:
            if self._stop.wait(min(remaining, CHANGE_CHECK_S)):
                return
            if self._store is not None and self._store.changed():
                return

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[None]:
        """Run the loop in a thread for the duration of the block; stop and join it after."""
        # A daemon: a store that hangs past JOIN_TIMEOUT_S must not keep the process alive.
        thread = threading.Thread(target=self.run, name="queuectl-scheduler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self.stop()
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                self.log(f"scheduler: still in a tick after {JOIN_TIMEOUT_S:g} s; exiting anyway")

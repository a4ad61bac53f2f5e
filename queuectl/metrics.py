"""Prometheus metrics of one store (SPEC 15), read through Queue.

Every value comes from the store, never from one process's memory: counts and
attempt counters are kept by triggers in the writes that change them (migration
0012), so they are the same from any host, survive restarts and outlive the jobs
that retention deletes. Nothing here counts the jobs table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .core import RUN_OUTCOMES, Queue
from .models import JobState

# The upper bounds of queuectl_job_run_duration_seconds; the finish trigger of migration
# 0012 buckets each attempt by these (in milliseconds), and -1 there means +Inf.
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class QueueCollector(Collector):
    """Collects the metrics of one queue's store on every scrape."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        queue = self.queue
        now = queue.clock()
        counts = queue.counts_by_queue()
        totals = queue.run_totals()
        names = sorted({name for name, _ in counts} | {t.queue for t in totals})

        jobs = GaugeMetricFamily(
            "queuectl_jobs", "Jobs in the store, by queue and state.", labels=["queue", "state"]
        )
        for name in names:
            for state in JobState:
                jobs.add_metric([name, state.value], counts.get((name, state), 0))
        yield jobs

        yield GaugeMetricFamily(
            "queuectl_workers",
            "Live workers (their lease holds).",
            value=len(queue.live_workers()),
        )

        waiting = [name for name in names if counts.get((name, JobState.PENDING), 0) > 0]
        oldest = queue.oldest_due(waiting)
        age = GaugeMetricFamily(
            "queuectl_queue_oldest_pending_age_seconds",
            "How long the longest-waiting due pending job of the queue has waited (0: none).",
            labels=["queue"],
        )
        for name in names:
            since = oldest.get(name)
            age.add_metric([name], max(0.0, (now - since).total_seconds()) if since else 0.0)
        yield age

        runs = CounterMetricFamily(
            "queuectl_job_runs",
            "Attempts ended, by queue and outcome (completed, failed: to be retried, dead).",
            labels=["queue", "outcome"],
        )
        ran: dict[tuple[str, str], int] = defaultdict(int)
        buckets: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        sums: dict[str, int] = defaultdict(int)
        for total in totals:
            ran[total.queue, total.outcome] += total.n
            buckets[total.queue][total.le_ms] += total.n
            sums[total.queue] += total.sum_ms
        for name in names:
            for outcome in RUN_OUTCOMES:
                runs.add_metric([name, outcome], ran[name, outcome])
        yield runs

        duration = HistogramMetricFamily(
            "queuectl_job_run_duration_seconds",
            "How long attempts ran, from claim to result, by queue.",
            labels=["queue"],
        )
        for name in names:
            by_le = buckets[name]
            cumulative, series = 0, []
            for bound in DURATION_BUCKETS_S:
                cumulative += by_le.get(round(bound * 1000), 0)
                series.append((_le(bound), float(cumulative)))
            series.append(("+Inf", float(sum(by_le.values()))))
            duration.add_metric([name], series, sum_value=sums[name] / 1000)
        yield duration

        next_run = GaugeMetricFamily(
            "queuectl_schedule_next_run_timestamp_seconds",
            "When the schedule's next run is due (in the past: no scheduler ticks). "
            "Suspended schedules have none.",
            labels=["schedule"],
        )
        last_success = GaugeMetricFamily(
            "queuectl_schedule_last_success_timestamp_seconds",
            "When a run of the schedule last completed (absent: never).",
            labels=["schedule"],
        )
        missed = CounterMetricFamily(
            "queuectl_schedule_missed",
            "Slots of the schedule that were not run (catch-up and overlap rules).",
            labels=["schedule"],
        )
        overdue = GaugeMetricFamily(
            "queuectl_schedule_overdue",
            "1 when no run completed within the schedule's expect_success_within.",
            labels=["schedule"],
        )
        for schedule in queue.schedules():
            if not schedule.suspended:
                next_run.add_metric([schedule.id], queue.next_run(schedule).timestamp())
            if schedule.last_success_at is not None:
                last_success.add_metric([schedule.id], schedule.last_success_at.timestamp())
            missed.add_metric([schedule.id], schedule.missed)
            overdue.add_metric([schedule.id], 1 if schedule.overdue else 0)
        yield from (next_run, last_success, missed, overdue)


def _le(bound: float) -> str:
    """A bucket bound as Prometheus clients write it (1.0, 0.05)."""
    return repr(float(bound))


def exposition(queue: Queue) -> bytes:
    """The Prometheus text exposition of the queue's store, as of now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(queue))
    return generate_latest(registry)

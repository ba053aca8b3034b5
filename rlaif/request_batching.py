"""Concurrent reward requests gathered into one judge call: the batching behind `rlaif serve`.

A request becomes a `Job`; `Batcher.run` takes the first queued job, adds every job already queued
and then those arriving within the wait bound, up to a number of completions, and judges them in
one `JudgeReward.judge_batch` call off the event loop. Requests arriving while a batch is judged
queue up and join the next one, so batches grow with the load. `Metrics` counts what
`GET /metrics` reports.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass

from rlaif.rewards import JudgeReward


@dataclass
class Job:
    """One request's rows, waiting for its share of a batch."""

    prompts: list
    completions: list
    columns: dict
    groups: list[int]
    future: asyncio.Future


class Metrics:
    """Counters for GET /metrics; latencies over the last `window` requests."""

    def __init__(self, window: int = 10_000):
        self.started = time.time()
        self.requests: Counter = Counter()
        self.errors: Counter = Counter()
        self.latencies: deque[float] = deque(maxlen=window)
        self.batch_requests: Counter = Counter()
        self.batches = self.rows = self.judgments = 0
        self.judge_seconds = 0.0

    def batch(self, jobs: int, rows: int, judgments: int, seconds: float) -> None:
        self.batches += 1
        self.batch_requests[jobs] += 1
        self.rows += rows
        self.judgments += judgments
        self.judge_seconds += seconds

    def snapshot(self, queued: int) -> dict:
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

        sizes = self.batch_requests
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": dict(self.requests), "errors": dict(self.errors), "queued": queued,
            "batches": self.batches, "completions": self.rows, "judgments": self.judgments,
            "batch_requests": {"mean": round(sum(k * v for k, v in sizes.items()) / self.batches, 3)
                               if self.batches else None, "max": max(sizes, default=None),
                               "histogram": {str(k): v for k, v in sorted(sizes.items())}},
            "batch_completions_mean": round(self.rows / self.batches, 3) if self.batches else None,
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "n": len(lat)},
            "judgments_per_s": round(self.judgments / self.judge_seconds, 2) if self.judge_seconds else None,
            "completions_per_s": round(self.rows / self.judge_seconds, 2) if self.judge_seconds else None,
        }


class Batcher:
    """Gathers concurrent jobs into one `judge_batch` call, run off the event loop, one at a time."""

    def __init__(self, reward: JudgeReward, metrics: Metrics, max_batch_size: int, max_wait_s: float):
        self.reward, self.metrics = reward, metrics
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self._carry: Job | None = None

    async def submit(self, job: Job):
        await self.queue.put(job)
        return await job.future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job, self._carry = self._carry or await self.queue.get(), None
            jobs, rows = [job], len(job.completions)
            deadline = loop.time() + self.max_wait_s
            while rows < self.max_batch_size:
                try:  # jobs already queued join at once; then wait for more until the deadline
                    nxt = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                if rows + len(nxt.completions) > self.max_batch_size:
                    self._carry = nxt
                    break
                jobs.append(nxt)
                rows += len(nxt.completions)
            await self._judge(jobs)

    async def _judge(self, jobs: list[Job]) -> None:
        t0 = time.perf_counter()
        try:
            batch = await asyncio.to_thread(self._judge_together, jobs)
        except Exception as e:  # noqa: BLE001 - handed to the request that caused it
            if len(jobs) > 1:  # one request's bad data must not fail the others: judge each alone
                for job in jobs:
                    await self._judge([job])
            elif not jobs[0].future.done():
                jobs[0].future.set_exception(e)
            return
        self.metrics.batch(len(jobs), sum(len(j.completions) for j in jobs), batch.judgments, time.perf_counter() - t0)
        start = 0
        for job in jobs:
            n = len(job.completions)
            if not job.future.done():
                job.future.set_result((batch.rewards[start:start + n], batch.records[start:start + n]))
            start += n

    def _judge_together(self, jobs: list[Job]):
        names = {c for j in jobs for c in j.columns}
        prompts, completions, groups, columns = [], [], [], {c: [] for c in names}
        for job in jobs:
            offset = 1 + max(groups, default=-1)
            prompts += job.prompts
            completions += job.completions
            groups += [offset + g for g in job.groups]
            for c in names:
                columns[c] += job.columns.get(c, [None] * len(job.completions))
        return self.reward.judge_batch(prompts, completions, columns, groups)

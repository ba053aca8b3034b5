"""The rate limiter learns a server's budget: a real server on 127.0.0.1 with a fixed budget per short window.

The server (tests/rate_limited_server.py) answers at most B requests per W-second window and
sends 429 with Retry-After for the rest, with or without OpenAI's `x-ratelimit-*` headers. After
the first window of the storm (the first with a 429: the limiter knows nothing before it) the
share of 429s must stay under 5% and the requests answered per window within 80% of the budget.
Both are counted on the server. The budget (20 requests/s) is kept well under what the client
manages on a busy 2-core machine, so the figures measure the limiter, not the machine.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rlaif.engines import GenerationRequest
from rlaif.engines.openai import OpenAIEngine
from rlaif.engines.ratelimit import LearnedBudget, parse_duration, retry_after
from rlaif.records import SamplingParams

SERVER = Path(__file__).with_name("rate_limited_server.py")
BUDGET, WINDOW, REQUESTS = 20, 1.0, 180


@pytest.mark.parametrize("duration,seconds", [("1s", 1.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("20ms", 0.02),
                                              ("0.25", 0.25), ("2m", 120.0), ("soon", None), ("", None)])
def test_durations_in_rate_limit_headers(duration, seconds):
    assert parse_duration(duration) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_ms_wins_and_http_dates_are_ignored():
    assert retry_after(httpx.Headers({"retry-after": "3", "retry-after-ms": "250"})) == pytest.approx(0.25)
    assert retry_after(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None


@pytest.mark.parametrize("headers", [True, False], ids=["x-ratelimit-headers", "retry-after-only"])
@pytest.mark.slow
def test_limiter_adapts_to_a_429_storm(headers):
    proc = subprocess.Popen([sys.executable, str(SERVER), "--budget", str(BUDGET), "--window", str(WINDOW),
                             *(["--headers"] if headers else [])], stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}/v1"
        engine = OpenAIEngine("mock", base_url=url, max_concurrency=32, max_retries=30, retry_backoff_s=0.05,
                              timeout_s=5.0)
        results = engine.generate([GenerationRequest([{"role": "user", "content": f"storm {i}"}],
                                                     SamplingParams(n=1, max_new_tokens=4)) for i in range(REQUESTS)])
        assert all(r.failure is None for r in results)
        stats = httpx.get(url.removesuffix("/v1") + "/stats").json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    windows: dict[int, list[int]] = {}
    for t, status in stats["log"]:
        windows.setdefault(math.floor((t - stats["t0"]) / WINDOW), []).append(status)
    storm = [w for w, statuses in windows.items() if 429 in statuses]
    assert storm, "32 requests at once never exceeded a budget of 20: no storm to adapt to"
    first, last = min(storm), max(windows)
    after_first = [s for w, statuses in windows.items() if w > first for s in statuses]
    share_429 = after_first.count(429) / len(after_first)
    full = range(first + 1, last)  # the windows between the first and the last (partial) one
    served = sum(windows.get(w, []).count(200) for w in full) / (len(full) * BUDGET)
    assert sum(s == 200 for _, s in stats["log"]) == REQUESTS
    assert share_429 < 0.05, (share_429, {w: (v.count(200), v.count(429)) for w, v in sorted(windows.items())})
    assert served >= 0.8, (served, {w: (v.count(200), v.count(429)) for w, v in sorted(windows.items())})


def test_a_late_429_realigns_the_window_and_only_a_second_one_shrinks_the_budget():
    learned = LearnedBudget(limit=20, window=1.0, end=10.0, first_end=5.3, named_end=9.3, windows_named=4)
    assert learned.wait(10.0, in_flight=0) == 0 and learned.remaining == 20  # a new window: the whole budget
    for _ in range(20):
        learned.booked()
    for _ in range(5):
        learned.answered()
    learned.limited(10.3, sent_at=10.0)  # 429s after 5 answers: the windows drifted, the server's ends at 10.3
    assert learned.wait(10.2, in_flight=15) > 0 and learned.wait(10.3, in_flight=0) == 0
    assert learned.limit == 20 and learned.end == pytest.approx(11.3)
    for _ in range(20):
        learned.booked()
    for _ in range(12):
        learned.answered()
    learned.limited(11.3, sent_at=10.3)  # again, in an aligned window: the budget shrank to what got through
    learned.wait(11.3, in_flight=0)
    assert learned.limit == 12


def test_429s_of_one_window_answered_late_do_not_make_a_short_window():
    learned = LearnedBudget()
    learned.limited(1.0, sent_at=0.1)
    learned.limited(1.3, sent_at=0.2)  # sent before the named end: the same window, answered late
    assert learned.window is None and learned.end == 1.0
    learned.limited(2.05, sent_at=1.0)  # sent after it: the next window
    assert learned.window == pytest.approx(1.05)
    learned.limited(2.05, sent_at=2.05)  # `Retry-After: 0` at the named end itself: that window again
    assert learned.windows_named == 1 and learned.window == pytest.approx(1.05)

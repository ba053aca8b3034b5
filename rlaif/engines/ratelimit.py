"""A client-side rate limiter that starts from the configured limits and learns the server's.

Why it looks like this:
- Configured `requests_per_minute` / `tokens_per_minute` space requests evenly (a floor that is
  always kept). Without them nothing is held back until the server says something.
- `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers (OpenAI's, and many others')
  give the server's budget: the limiter mirrors it, counting every request still in flight as
  spent (the server may not have seen it when it answered), and waits for the reset instead of
  collecting 429s.
- A 429 with `Retry-After` (or `retry-after-ms`) and no headers pauses every request until then,
  and teaches the limiter the budget (LearnedBudget): what got through in a window, and the
  window's length from the ends that Retry-After names. It then sends that budget per window.
- A 429 with neither: tenacity's jittered exponential backoff (the engine's retry) is the fallback.
- No locks: acquire() decides and books a slot without awaiting, so one event loop cannot race
  it; the learned state lives on the engine, across calls.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field

DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


def parse_duration(value: str | None) -> float | None:
    """`1s`, `6m0s`, `1h2m3.5s`, `20ms`, or plain seconds (`0.5`) -> seconds."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    m = DURATION.match(value)
    if not m or not any(m.groups()):
        return None
    h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000


def retry_after(headers) -> float | None:
    """Seconds the server asks us to wait (`retry-after-ms` wins; an HTTP date is ignored)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return parse_duration(headers.get("retry-after"))


@dataclass
class Budget:
    """One server budget (requests or tokens) as last reported, less what was sent since."""

    limit: float | None = None
    remaining: float | None = None
    reset_at: float = 0.0
    window_ticket: int = 0  # answers to requests booked up to this one belong to an older window
    newest_ticket: int = 0  # the newest request whose answer set the reset time

    def wait(self, now: float, need: float, tickets: int, in_flight: float) -> float:
        if self.remaining is None:
            return 0.0
        if now >= self.reset_at or (self.reset_at == math.inf and not in_flight):
            if self.limit is None:
                self.remaining = None
                return 0.0
            # the window turned over: a full budget less what is in flight (it may land in the new window),
            # and no reset time until an answer to a request sent from now on says it
            self.remaining, self.reset_at, self.window_ticket = self.limit - in_flight, math.inf, tickets
        if self.remaining >= need or (self.limit is not None and need > self.limit and self.remaining >= self.limit):
            return 0.0
        return max(min(self.reset_at - now, 1.0), 0.005)

    def update(self, ticket: int, limit, remaining, reset, now: float, in_flight: float) -> None:
        """One answer's report. Within a window the budget only shrinks (answers come back out of order,
        and an earlier one may report more than is left); a new window takes the first report as it is."""
        if limit is not None:
            self.limit = limit
        if remaining is None or reset is None or ticket <= self.window_ticket:
            return  # nothing said, or an answer to a request sent before the window turned over
        fresh = remaining - in_flight
        self.remaining = fresh if self.reset_at == math.inf or self.remaining is None else min(self.remaining, fresh)
        if ticket > self.newest_ticket or self.reset_at == math.inf:
            self.reset_at, self.newest_ticket = now + reset, ticket


@dataclass
class LearnedBudget:
    """Without headers, the budget is learned from 429s. `Retry-After` names the end of the server's
    window; what got through before the 429 is its budget; the time between two ends its length.

    First window: everything goes until the 429 (nothing is known yet). Second: the learned budget,
    then one request at a time until a 429 names the window's end (and a success grows the budget).
    From then on: the budget at each window's start, nothing in between, no 429.

    A 429 before this window's budget was used means the windows drifted apart (the window's length
    was guessed from a late answer): it realigns the end and keeps the budget. A second one in the
    next window means the budget shrank, and what got through in it becomes the budget.
    """

    limit: int | None = None  # requests answered per window
    window: float | None = None  # the window's length
    end: float | None = None  # the current window's end (None: unknown until a 429 names it)
    first_end: float | None = None  # the first end a 429 named
    named_end: float | None = None  # the last end a 429 named
    windows_named: int = 0  # windows from the first named end to the last
    remaining: float = 0.0
    served: int = 0  # answered in the current window
    saturated: bool = False  # the current window ended in a 429: what got through in it is the budget
    drifted: bool = False  # the current window's 429 came before its budget was used
    drifted_before: bool = False  # ... and so did the previous window's

    def wait(self, now: float, in_flight: int) -> float:
        if self.end is not None and now >= self.end:  # the window turned over
            if self.saturated:  # late answers of the saturated window are in `served` by now
                self.limit, self.saturated = max(self.served, 1), False
            self.drifted_before, self.drifted = self.drifted, False
            if self.window:
                self.end += self.window * max(1, math.ceil((now - self.end) / self.window))
            else:
                self.end = None
            self.remaining, self.served = (self.limit or 0) - in_flight, 0
        if self.limit is None or self.remaining >= 1:
            return 0.0
        if self.end is None:  # one request at a time past the budget, until a 429 names the window's end
            return 0.0 if not in_flight else 0.005
        return self.end - now + 0.005

    def booked(self) -> None:
        self.remaining -= 1

    def answered(self) -> None:
        self.served += 1
        if self.limit is not None and self.served > self.limit:
            self.limit = self.served  # more got through than we thought the budget was

    def limited(self, end: float, sent_at: float) -> None:
        """A 429 whose Retry-After ends at `end`, for a request sent at `sent_at`."""
        if self.named_end is not None and (sent_at < self.named_end or end <= self.named_end):
            # sent before the last named end, or ending no later: the same window, named again; the earliest
            # word is the least late
            if self.end == self.named_end:  # (not once the window has turned over)
                self.end = min(self.end, end)
            self.named_end = min(self.named_end, end)
            return
        if self.first_end is None:
            self.first_end, self.named_end = end, end
        else:  # a later window: count the windows step by step, average the length over all of them
            guess = self.window or (end - self.named_end)
            self.windows_named += max(1, round((end - self.named_end) / guess))
            self.window, self.named_end = (end - self.first_end) / self.windows_named, end
        drifted = (self.limit is not None and self.end is not None and self.served < self.limit
                   and not self.drifted_before)
        self.end, self.remaining = end, 0.0
        self.drifted, self.saturated = drifted, not drifted


@dataclass
class RateLimiter:
    """Paces requests to the configured RPM/TPM and to what the server reports or enforces."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    requests: Budget = field(default_factory=Budget)
    tokens: Budget = field(default_factory=Budget)
    learned: LearnedBudget = field(default_factory=LearnedBudget)
    paused_until: float = 0.0
    next_request: float = 0.0
    next_tokens: float = 0.0
    in_flight: dict[int, int] = field(default_factory=dict)  # ticket -> its estimated tokens
    sent_at: dict[int, float] = field(default_factory=dict)  # ticket -> when it was booked
    tickets: int = 0
    headers_seen: bool = False

    async def acquire(self, tokens: int = 0) -> int:
        """Wait for a slot, book it, and return its ticket (give it back to `observe` or `release`)."""
        while True:
            now = time.monotonic()
            waits = [self.paused_until - now, self.next_request - now, self.next_tokens - now,
                     self.requests.wait(now, 1, self.tickets, len(self.in_flight)),
                     self.tokens.wait(now, tokens, self.tickets, sum(self.in_flight.values())),
                     0.0 if self.headers_seen else self.learned.wait(now, len(self.in_flight))]
            wait = max(waits)
            if wait <= 0:
                return self._book(now, tokens)
            await asyncio.sleep(wait)

    def _book(self, now: float, tokens: int) -> int:
        if self.requests_per_minute:
            self.next_request = max(now, self.next_request) + 60.0 / self.requests_per_minute
        if self.tokens_per_minute:
            self.next_tokens = max(now, self.next_tokens) + tokens * 60.0 / self.tokens_per_minute
        if self.requests.remaining is not None:
            self.requests.remaining -= 1
        if self.tokens.remaining is not None:
            self.tokens.remaining -= tokens
        self.learned.booked()
        self.tickets += 1
        self.in_flight[self.tickets] = tokens
        self.sent_at[self.tickets] = now
        return self.tickets

    def release(self, ticket: int) -> None:
        """The request never got an answer (connection error, timeout)."""
        self.in_flight.pop(ticket, None)
        self.sent_at.pop(ticket, None)

    def observe(self, ticket: int, status: int, headers) -> None:
        """Learn from one answer: its rate-limit headers, and a 429's Retry-After."""
        now = time.monotonic()
        self.in_flight.pop(ticket, None)
        sent_at = self.sent_at.pop(ticket, now)
        # requests still in flight may not have been counted when the server answered: assume none were
        pending = list(self.in_flight.values())
        for kind, budget, sent_later in (("requests", self.requests, len(pending)), ("tokens", self.tokens, sum(pending))):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            self.headers_seen |= limit is not None
            budget.update(ticket, limit, _number(headers.get(f"x-ratelimit-remaining-{kind}")),
                          parse_duration(headers.get(f"x-ratelimit-reset-{kind}")), now, sent_later)
        if status != 429:
            self.learned.answered()
            return
        wait = retry_after(headers)
        if wait is None:
            return  # nothing to learn from: the engine's own backoff applies
        end = now + wait
        self.paused_until = max(self.paused_until, end)
        if not self.headers_seen:
            self.learned.limited(end, sent_at)
        if self.requests.remaining is not None:
            self.requests.remaining = min(self.requests.remaining, 0)
            self.requests.reset_at = max(self.requests.reset_at, end) if self.requests.reset_at != math.inf else end


def _number(value) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None

"""OpenAI's Batch API behind `generate`: half the price on OpenAI, answers within the completion window.

The protocol (https://platform.openai.com/docs/guides/batch): upload a JSONL file of requests to
`/files` (purpose `batch`), create a job with `POST /batches`, poll `GET /batches/{id}` until it is
`completed`, `expired`, `failed` or `cancelled`, then download `output_file_id` (answers) and
`error_file_id` (failed and expired requests).

Why it looks like this:
- The ledger holds the job. An *intent* is written before the batch is created and sent as the
  batch's metadata; its id is recorded as soon as it is known. A killed driver re-attaches to
  its batch (found by that metadata when the kill came before the id was recorded) instead of
  paying for a new one, and collects answers into the ledger in one transaction per batch.
- Every sample key is submitted at most twice: whatever failed or expired in its first batch goes
  into one follow-up batch, then is recorded as a row failure with both errors.
- Custom ids are hashes of the request bodies, so they are unique in a file and stable across
  reruns; the answers are stored under the same per-sample keys as the synchronous path, so a
  batch answer also serves a later synchronous rerun and the other way round.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx

from rlaif.engines.base import GenerationRequest, GenerationResult
from rlaif.engines.ledger import CallLedger, LedgerKey, digest
from rlaif.engines.openai_http import ServerError
from rlaif.errors import EngineError
from rlaif.progress import StageProgress

log = logging.getLogger(__name__)

TERMINAL = {"completed", "expired", "failed", "cancelled"}
MAX_REQUESTS_PER_BATCH = 50_000  # OpenAI's limit per batch file
MAX_SUBMISSIONS = 2  # the first batch, then one follow-up
LIST_PAGES = 10  # pages of GET /batches searched for a batch whose id was never recorded


@dataclass
class Item:
    """One line of a batch file: a request body and the sample keys its choices fill, in order."""

    custom_id: str
    endpoint: str
    body: dict
    chat: bool
    keys: list[LedgerKey]


class BatchDriver:
    """Runs planned generation calls through the Batch API, resumably, and answers them from the ledger."""

    def __init__(self, engine, progress: bool = True):
        self.engine = engine
        self.ledger: CallLedger = engine.ledger if engine.ledger is not None else CallLedger(":memory:")
        self.progress = progress
        self.prefix = urlparse(engine.base_url).path.rstrip("/")  # batch lines name the full path: /v1/...

    def run(self, calls: list[list[GenerationRequest]]) -> list[list[GenerationResult]]:
        plans = [self.engine.plan(requests) for requests in calls]
        flat = [pl for call in plans for pl in call]
        keys = {k.key: k for pl in flat for k in pl.keys}
        self.ledger.lookup(list(keys.values()))  # counts hits and misses once
        try:
            self.engine.run(lambda client, sem: self._drive(client, sem, flat, keys))
        except ServerError as e:  # the protocol itself failed (after retries): the ledger keeps what was done
            if e.status in (401, 403):
                raise self.engine.fatal(e) from None
            fix = ("it does not speak the Batch API (vLLM's server does not): set generate.batch to false"
                   if e.status in (404, 405) else "rerun the same command to resume the job")
            raise EngineError(f"Batch API at {self.engine.base_url}: {self.engine.redact(str(e))}; {fix}") from None
        except httpx.TransportError as e:
            raise EngineError(f"Batch API: {self.engine.describe(e)}; rerun the same command to resume the job") \
                from None
        found = self.ledger.fetch(list(keys))
        errors = self._errors([k for k in keys if k not in found])
        out = []
        for call in plans:
            results = []
            for pl in call:
                result = self.engine.result(pl, found)
                if result is None:
                    why = next((errors[k.key] for k in pl.keys if k.key in errors), "no answer")
                    result = GenerationResult(failure=self.engine.redact(f"Batch API: {why}")[:500])
                results.append(result)
            out.append(results)
        return out

    async def _drive(self, client, sem, plans, keys: dict[str, LedgerKey]) -> None:
        for _ in range(2 * MAX_SUBMISSIONS + 2):  # each round finishes batches or submits new ones
            missing = sorted(set(keys) - self.ledger.known(list(keys)))
            if not missing:
                return
            pending = self._pending(missing)
            if pending:
                for intent in pending:
                    await self._finish(client, sem, intent)
                continue
            tries = self._tries(missing)
            todo = {k for k in missing if tries.get(k, 0) < MAX_SUBMISSIONS}
            if not todo:
                return
            items = self._items(plans, todo)
            for endpoint in sorted({it.endpoint for it in items}):
                group = [it for it in items if it.endpoint == endpoint]
                for s in range(0, len(group), MAX_REQUESTS_PER_BATCH):
                    attempt = 1 + max(tries.get(k.key, 0) for it in group[s:s + MAX_REQUESTS_PER_BATCH]
                                      for k in it.keys)
                    await self._submit(client, sem, endpoint, group[s:s + MAX_REQUESTS_PER_BATCH], attempt)

    # ------------------------------------------------------------ what the ledger says

    def _pending(self, missing: list[str]) -> list[str]:
        """Intents not yet collected that hold any missing key, oldest first."""
        rows = self._in(missing, "SELECT DISTINCT b.intent, b.created FROM batches b JOIN batch_items i "
                                 "USING(intent) WHERE b.collected = 0 AND i.sample_key IN ({})")
        return [intent for intent, _ in sorted(set(rows), key=lambda r: r[1])]

    def _tries(self, missing: list[str]) -> dict[str, int]:
        """Collected submissions of each key that did not answer it."""
        tries: dict[str, int] = {}
        for key, n in self._in(missing, "SELECT i.sample_key, COUNT(*) FROM batch_items i JOIN batches b "
                                        "USING(intent) WHERE b.collected = 1 AND i.state = 'failed' AND "
                                        "i.sample_key IN ({}) GROUP BY i.sample_key"):
            tries[key] = tries.get(key, 0) + n
        return tries

    def _errors(self, missing: list[str]) -> dict[str, str]:
        errors: dict[str, list[str]] = {}
        for key, batch_id, error in self._in(missing, "SELECT i.sample_key, b.batch_id, i.error FROM batch_items i "
                                                      "JOIN batches b USING(intent) WHERE i.state = 'failed' AND "
                                                      "i.sample_key IN ({}) ORDER BY b.created"):
            errors.setdefault(key, []).append(f"batch {batch_id}: {error}")
        return {k: (f"failed {len(v)} times: " if len(v) > 1 else "failed: ") + "; ".join(v)
                for k, v in errors.items()}

    def _in(self, keys: list[str], sql: str) -> list[tuple]:
        rows = []
        for s in range(0, len(keys), 500):
            chunk = keys[s:s + 500]
            rows += self.ledger.query(sql.format(",".join("?" * len(chunk))), chunk)
        return rows

    def _items(self, plans, todo: set[str]) -> list[Item]:
        """Batch lines for the keys still to ask: one per request (one per sample when `n` is ignored)."""
        items: dict[str, Item] = {}
        for pl in plans:
            wanted = [j for j, k in enumerate(pl.keys) if k.key in todo]
            groups = [[j] for j in wanted] if self.engine.n_ignored else ([wanted] if wanted else [])
            for samples in groups:
                endpoint, body, chat, _ = self.engine.request_body(pl.req.prompt, pl.req.params, len(samples),
                                                                   pl.seed + samples[0])
                custom_id = digest([endpoint, body])[:32]
                items.setdefault(custom_id, Item(custom_id, endpoint, body, chat, [pl.keys[j] for j in samples]))
        return list(items.values())

    # ------------------------------------------------------------ the protocol

    async def _submit(self, client, sem, endpoint: str, items: list[Item], attempt: int) -> None:
        intent = uuid.uuid4().hex
        url = self.prefix + endpoint
        data = "".join(json.dumps({"custom_id": it.custom_id, "method": "POST", "url": url, "body": it.body}) + "\n"
                       for it in items).encode()
        self.ledger.write([
            ("INSERT INTO batches (intent, endpoint, status, attempt, created, stage, iteration) VALUES "
             "(?, ?, 'uploading', ?, ?, ?, ?)",
             [(intent, url, attempt, time.time(), self.ledger.stage, self.ledger.iteration)]),
            ("INSERT INTO batch_items (intent, custom_id, sample_key, position, fields, prompt_hash, model, chat) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
             [(intent, it.custom_id, k.key, pos, json.dumps(k.fields), k.prompt_hash, k.model, int(it.chat))
              for it in items for pos, k in enumerate(it.keys)])])
        file = await self.engine.request(client, sem, "POST", "/files", data={"purpose": "batch"},
                                         files={"file": ("rlaif-batch.jsonl", data, "application/jsonl")})
        self._update(intent, input_file_id=file["id"])
        batch = await self.engine.request(client, sem, "POST", "/batches", json_body={
            "input_file_id": file["id"], "endpoint": url, "completion_window": "24h",
            "metadata": {"rlaif_intent": intent}})
        self._update(intent, batch_id=batch["id"], status=batch.get("status", "validating"))
        log.info("Batch API: created batch %s (%d requests, submission %d)", batch["id"], len(items), attempt)

    async def _finish(self, client, sem, intent: str) -> None:
        """Re-attach to a batch (finding it by its metadata if need be), wait for it, collect it."""
        [(batch_id, created)] = self.ledger.query("SELECT batch_id, created FROM batches WHERE intent = ?", (intent,))
        if batch_id is None:
            batch_id = await self._find(client, sem, intent, created)
            if batch_id is None:  # killed before the batch was created: nothing was sent
                self.ledger.write([("UPDATE batches SET status = 'abandoned', collected = 1 WHERE intent = ?",
                                     [(intent,)]),
                                    ("UPDATE batch_items SET state = 'abandoned' WHERE intent = ?", [(intent,)])])
                return
            self._update(intent, batch_id=batch_id)
            log.info("Batch API: re-attached to batch %s", batch_id)
        batch = await self._poll(client, sem, batch_id)
        await self._collect(client, sem, intent, batch)

    async def _find(self, client, sem, intent: str, created: float) -> str | None:
        after = None
        for _ in range(LIST_PAGES):
            page = await self.engine.request(client, sem, "GET", "/batches?limit=100" + (f"&after={after}" if after
                                                                                         else ""))
            for b in page.get("data") or []:
                if (b.get("metadata") or {}).get("rlaif_intent") == intent:
                    return b["id"]
            batches = page.get("data") or []
            if not page.get("has_more") or not batches or (batches[-1].get("created_at") or 0) < created - 3600:
                return None
            after = batches[-1]["id"]
        return None

    async def _poll(self, client, sem, batch_id: str) -> dict:
        wait = self.engine.batch_poll_s
        batch = await self.engine.request(client, sem, "GET", f"/batches/{batch_id}")
        counts = batch.get("request_counts") or {}
        with StageProgress(f"batch {batch_id}", total=int(counts.get("total") or 0),
                           done=int((counts.get("completed") or 0) + (counts.get("failed") or 0)), unit="requests",
                           enabled=self.progress) as bar:
            done = bar_done = int((counts.get("completed") or 0) + (counts.get("failed") or 0))
            while batch.get("status") not in TERMINAL:
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.engine.batch_poll_max_s)
                batch = await self.engine.request(client, sem, "GET", f"/batches/{batch_id}")
                counts = batch.get("request_counts") or {}
                done = int((counts.get("completed") or 0) + (counts.get("failed") or 0))
                if done > bar_done:
                    bar.advance(done - bar_done)
                    bar_done = done
                log.info("Batch API: batch %s %s, %s", batch_id, batch.get("status"), counts)
                self._update_by_id(batch_id, status=batch.get("status"))
        return batch

    async def _collect(self, client, sem, intent: str, batch: dict) -> None:
        """Download answers and errors; store answers and item states in one transaction."""
        lines = []
        for field in ("output_file_id", "error_file_id"):
            if batch.get(field):
                text = await self.engine.request(client, sem, "GET", f"/files/{batch[field]}/content", text=True)
                lines += [json.loads(line) for line in text.splitlines() if line.strip()]
        items: dict[str, list] = {}
        for cid, key, pos, fields, prompt_hash, model, chat in self.ledger.query(
                "SELECT custom_id, sample_key, position, fields, prompt_hash, model, chat FROM batch_items "
                "WHERE intent = ? ORDER BY custom_id, position", (intent,)):
            items.setdefault(cid, []).append((LedgerKey(key, json.loads(fields), prompt_hash, model), bool(chat)))
        answers, states = [], {}
        for line in lines:
            cid = line.get("custom_id")
            if cid not in items:
                continue
            keys = [k for k, _ in items[cid]]
            response, error = line.get("response") or {}, line.get("error")
            if response.get("status_code") == 200 and not error:
                try:
                    got = self.engine.answers(response["body"], items[cid][0][1], keys)
                except (KeyError, TypeError, ValueError) as e:
                    states.update({k.key: ("failed", f"malformed answer: {e!r}") for k in keys})
                    continue
                answers += got
                states.update({k.key: ("done", None) for k, *_ in got})
                short = keys[len(got):]
                if short:
                    self.engine.n_ignored = True
                    states.update({k.key: ("failed", f"{len(got)} of {len(keys)} samples in one request (no support "
                                                     "for n)") for k in short})
            else:
                states.update({k.key: ("failed", _error_text(response, error)) for k in keys})
        why = f"batch {batch.get('status')}" + (f": {_batch_errors(batch)}" if _batch_errors(batch) else "")
        for cid, entries in items.items():
            for k, _ in entries:
                states.setdefault(k.key, ("failed", f"no answer ({why})"))
        self.ledger.store_batch(intent, batch, answers, states)
        counts = {s: sum(v[0] == s for v in states.values()) for s in ("done", "failed")}
        log.info("Batch API: batch %s %s: %d samples answered, %d failed", batch["id"], batch.get("status"),
                 counts["done"], counts["failed"])

    def _update(self, intent: str, **values) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        self.ledger.write([(f"UPDATE batches SET {sets} WHERE intent = ?", [(*values.values(), intent)])])

    def _update_by_id(self, batch_id: str, **values) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        self.ledger.write([(f"UPDATE batches SET {sets} WHERE batch_id = ?", [(*values.values(), batch_id)])])


def _error_text(response: dict, error) -> str:
    if isinstance(error, dict):
        return f"{error.get('code') or 'error'}: {error.get('message') or ''}".strip()[:300]
    body = response.get("body") or {}
    message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
    return f"HTTP {response.get('status_code')}: {message or body}"[:300]


def _batch_errors(batch: dict) -> str:
    data = (batch.get("errors") or {}).get("data") or []
    return "; ".join(str(e.get("message")) for e in data)[:300]


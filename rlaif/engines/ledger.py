"""The call ledger: every completed request to an OpenAI-compatible server, kept so no request is paid twice.

Why it looks like this:
- One SQLite file per run (`RUN/ledger.sqlite`, WAL mode), shared by the generate and judge stages.
  A completed request is committed before the shard that uses it is written, so a kill -9 loses
  no paid work: a rerun answers from the ledger first and sends only what is missing.
- The key is a hash of what determines the answer: model, base URL, endpoint, the rendered request
  body less speed-only settings (which include `n`), the seed and the *sample index*. N samples
  of one prompt are N keys, so raising n or adding prompts reuses the samples already paid for,
  and a server that ignores `n` (one request per sample) fills the same keys.
- The key's fields are stored beside its hash (the prompt as its own hash), so `rlaif ledger RUN
  --explain` can name the field that broke a match. Only completed requests are stored: never a
  transient failure, never the API key (it lives in a header, which is not part of the key).
- `--overwrite` of a stage keeps a copy of the whole ledger as a file beside it, then rewrites the
  stage's data; the live ledger keeps every answer, so a request whose full key still matches is not
  paid again. That is what makes a rerun with a raised n or added prompts (which needs --overwrite)
  pay only for the new requests. New samples for the same requests need another seed.
- The Batch API's jobs are recorded here too (`batches`, `batch_items`), so a killed driver
  re-attaches to its batch instead of paying for a new one (rlaif/engines/batch.py).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

LEDGER_FILE = "ledger.sqlite"
SPEED_ONLY = {"n", "stream", "stream_options", "user", "metadata", "service_tier"}
CONTENT_FIELDS = ("messages", "prompt")  # stored as their hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    fields TEXT NOT NULL,            -- the key's fields as JSON, the prompt replaced by its hash
    prompt_hash TEXT NOT NULL,
    response TEXT NOT NULL,          -- the server's answer for this key (JSON)
    prompt_tokens INTEGER NOT NULL,  -- billed input tokens (a request's prompt counts once, on its first sample)
    completion_tokens INTEGER NOT NULL,
    model TEXT NOT NULL,             -- the model as the config names it (what pricing is keyed by)
    stage TEXT, iteration INTEGER, session TEXT,
    batch_id TEXT,                   -- set when the Batch API answered it
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_prompt ON calls(prompt_hash);
CREATE TABLE IF NOT EXISTS sessions (
    session TEXT PRIMARY KEY, stage TEXT, iteration INTEGER, started REAL
);
CREATE TABLE IF NOT EXISTS lookups (
    session TEXT, model TEXT, hits INTEGER NOT NULL DEFAULT 0, misses INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session, model)
);
CREATE TABLE IF NOT EXISTS misses (
    session TEXT, key TEXT, prompt_hash TEXT, fields TEXT, at REAL
);
CREATE TABLE IF NOT EXISTS batches (
    intent TEXT PRIMARY KEY,         -- ours, written before the batch is created (sent as metadata)
    batch_id TEXT, endpoint TEXT, status TEXT, attempt INTEGER,
    input_file_id TEXT, output_file_id TEXT, error_file_id TEXT,
    collected INTEGER NOT NULL DEFAULT 0, created REAL, stage TEXT, iteration INTEGER
);
CREATE TABLE IF NOT EXISTS batch_items (
    intent TEXT, custom_id TEXT, sample_key TEXT, position INTEGER,  -- which choice of the line fills it
    fields TEXT, prompt_hash TEXT, model TEXT, chat INTEGER,         -- enough to store the answer on re-attach
    state TEXT NOT NULL DEFAULT 'pending', error TEXT,
    PRIMARY KEY (intent, sample_key)
);
CREATE INDEX IF NOT EXISTS batch_items_key ON batch_items(sample_key);
"""


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass(frozen=True)
class LedgerKey:
    """One ledgered answer: its hash, its fields (prompt as a hash), and the model it is billed to."""

    key: str
    fields: dict
    prompt_hash: str
    model: str


def make_key(model: str, base_url: str, endpoint: str, body: dict, sample: int, label: str | None = None) -> LedgerKey:
    """The key of sample `sample` of a request; `body` is the rendered request (its `n` is ignored)."""
    content = {k: body[k] for k in CONTENT_FIELDS if k in body}
    prompt_hash = digest(content)
    rest = {k: v for k, v in body.items() if k not in SPEED_ONLY and k not in CONTENT_FIELDS and k != "model"}
    fields = {"model": model, "base_url": base_url, "endpoint": endpoint, **rest, "sample": sample}
    key = digest({**fields, **content})
    return LedgerKey(key, {**fields, "prompt": prompt_hash[:16]}, prompt_hash, label or model)


@dataclass
class Stored:
    response: dict
    prompt_tokens: int
    completion_tokens: int


class CallLedger:
    """The ledger of one run; `stage`/`iteration` label what this process adds (for accounting)."""

    def __init__(self, path: str | Path, *, stage: str | None = None, iteration: int = 0):
        self.path = str(path)
        self.stage, self.iteration = stage, iteration
        self.session = uuid.uuid4().hex[:12]
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._counted: set[str] = set()
        self._registered = False

    @classmethod
    def for_run(cls, run: str | Path, stage: str, iteration: int = 0, *, fresh: bool = False) -> "CallLedger":
        """The run's ledger; `fresh` (the stage's --overwrite) first keeps a copy of it beside (see set_aside)."""
        path = Path(run) / LEDGER_FILE
        if fresh and path.exists():
            set_aside(path, stage, iteration)
        return cls(path, stage=stage, iteration=iteration)

    # pickled into Ray replicas as its path and labels; each process opens its own connection
    def __getstate__(self):
        return {"path": self.path, "stage": self.stage, "iteration": self.iteration, "session": self.session}

    def __setstate__(self, state):
        self.__init__(state["path"], stage=state["stage"], iteration=state["iteration"])
        self.session = state["session"]

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
            conn.executescript(SCHEMA)
            self._conn = conn
        return self._conn

    def write(self, statements: list[tuple[str, list]]) -> None:
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                if not self._registered:  # a session exists once it writes (reading a ledger leaves no trace)
                    db.execute("INSERT OR IGNORE INTO sessions VALUES (?, ?, ?, ?)",
                               (self.session, self.stage, self.iteration, time.time()))
                    self._registered = True
                for sql, rows in statements:
                    db.executemany(sql, rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def query(self, sql: str, params=()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, params).fetchall()

    # ------------------------------------------------------------ answers

    def fetch(self, keys: list[str]) -> dict[str, Stored]:
        """The stored answers among `keys` (hashes)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Stored] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            rows = self.query(f"SELECT key, response, prompt_tokens, completion_tokens FROM calls WHERE key IN "
                              f"({','.join('?' * len(chunk))})", chunk)
            found.update({key: Stored(json.loads(r), p, c) for key, r, p, c in rows})
        return found

    def lookup(self, keys: list[LedgerKey]) -> dict[str, Stored]:
        """The stored answers among `keys`; counts hits and records misses (for accounting and --explain)."""
        found = self.fetch([k.key for k in keys])
        per_model: dict[str, list[int]] = {}
        missed = []
        for k in keys:
            if k.key in self._counted:  # a key counts once per session, however often it is read
                continue
            self._counted.add(k.key)
            per_model.setdefault(k.model, [0, 0])[0 if k.key in found else 1] += 1
            if k.key not in found:
                missed.append((self.session, k.key, k.prompt_hash, json.dumps(k.fields), time.time()))
        if not per_model:
            return found
        self.write([("INSERT INTO lookups VALUES (?, ?, ?, ?) ON CONFLICT(session, model) DO UPDATE SET "
                      "hits = hits + excluded.hits, misses = misses + excluded.misses",
                      [(self.session, m, h, n) for m, (h, n) in per_model.items()]),
                     ("INSERT INTO misses VALUES (?, ?, ?, ?, ?)", missed)])
        return found

    def store(self, answers: list[tuple[LedgerKey, dict, int, int]]) -> None:
        """Commit completed answers `(key, response, prompt_tokens, completion_tokens)` in one transaction."""
        self.write([self._inserts(answers, None)])

    def _inserts(self, answers: list, batch_id: str | None) -> tuple[str, list]:
        now = time.time()
        return ("INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(k.key, json.dumps(k.fields), k.prompt_hash, json.dumps(resp), int(p), int(c), k.model, self.stage,
                  self.iteration, self.session, batch_id, now) for k, resp, p, c in answers])

    def store_batch(self, intent: str, batch: dict, answers: list, states: dict[str, tuple[str, str | None]]) -> None:
        """A collected batch: its answers, each item's state and the batch's end, in one transaction."""
        self.write([
            self._inserts(answers, batch["id"]),
            ("UPDATE batch_items SET state = ?, error = ? WHERE intent = ? AND sample_key = ?",
             [(state, error, intent, key) for key, (state, error) in states.items()]),
            ("UPDATE batches SET status = ?, output_file_id = ?, error_file_id = ?, collected = 1 WHERE intent = ?",
             [(batch.get("status"), batch.get("output_file_id"), batch.get("error_file_id"), intent)])])

    def known(self, keys: list[str]) -> set[str]:
        out: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            out |= {r[0] for r in self.query(f"SELECT key FROM calls WHERE key IN ({','.join('?' * len(chunk))})",
                                             chunk)}
        return out

    # ------------------------------------------------------------ accounting

    def usage(self, stage: str | None = None, iteration: int | None = None) -> dict[str, dict]:
        """Per model: answers stored (paid), tokens, answers from the Batch API, and ledger hits."""
        where, params = _scope(stage, iteration)
        out: dict[str, dict] = {}
        for model, n, p, c, b in self.query(
                f"SELECT model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
                f"SUM(batch_id IS NOT NULL) FROM calls {where} GROUP BY model", params):
            out[model] = {"answers": n, "prompt_tokens": p or 0, "completion_tokens": c or 0, "batch_answers": b or 0,
                          "batch_prompt_tokens": 0, "batch_completion_tokens": 0, "hits": 0}
        for model, p, c in self.query(f"SELECT model, SUM(prompt_tokens), SUM(completion_tokens) FROM calls {where} "
                                      f"{'AND' if where else 'WHERE'} batch_id IS NOT NULL GROUP BY model", params):
            out[model].update(batch_prompt_tokens=p or 0, batch_completion_tokens=c or 0)
        swhere, sparams = _scope(stage, iteration, table="s.")
        for model, hits in self.query(f"SELECT l.model, SUM(l.hits) FROM lookups l JOIN sessions s USING(session) "
                                      f"{swhere} GROUP BY l.model", sparams):
            out.setdefault(model, {"answers": 0, "prompt_tokens": 0, "completion_tokens": 0, "batch_answers": 0,
                                   "batch_prompt_tokens": 0, "batch_completion_tokens": 0, "hits": 0})
            out[model]["hits"] = hits or 0
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _scope(stage, iteration, table: str = "") -> tuple[str, list]:
    clauses, params = [], []
    if stage is not None:
        clauses.append(f"{table}stage = ?")
        params.append(stage)
    if iteration is not None:
        clauses.append(f"{table}iteration = ?")
        params.append(iteration)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def set_aside(path: Path, stage: str, iteration: int) -> Path | None:
    """--overwrite of a stage: keep the whole ledger as `ledger-<UTC time>.sqlite` beside it (a record of
    what was paid before the overwrite). The live ledger keeps its answers: a request whose full key
    matches is still answered from it, so only what changed is sent again."""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        conn.executescript(SCHEMA)
        held = conn.execute("SELECT (SELECT COUNT(*) FROM calls WHERE stage = ? AND iteration = ?) + (SELECT COUNT(*) "
                            "FROM batches WHERE stage = ? AND iteration = ?)", (stage, iteration) * 2).fetchone()[0]
        if not held:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target, k = path.with_name(f"ledger-{stamp}.sqlite"), 1
        while target.exists():
            target, k = path.with_name(f"ledger-{stamp}-{k}.sqlite"), k + 1
        with closing(sqlite3.connect(target)) as copy:
            conn.backup(copy)  # a consistent copy, WAL included
        return target
    finally:
        conn.close()


# ---------------------------------------------------------------- reading a ledger back

def usage_summary(ledger: CallLedger, stage: str, iteration: int, pricing: dict | None = None) -> dict:
    """Flat manifest keys `api.<model>.<figure>` (and `cost_usd` when the models are priced) of one stage."""
    out: dict = {}
    total = 0.0
    priced = False
    for model, u in sorted(ledger.usage(stage, iteration).items()):
        out.update({f"api.{model}.answers": u["answers"], f"api.{model}.ledger_hits": u["hits"],
                    f"api.{model}.prompt_tokens": u["prompt_tokens"],
                    f"api.{model}.completion_tokens": u["completion_tokens"]})
        if u["batch_answers"]:
            out[f"api.{model}.batch_answers"] = u["batch_answers"]
        price = (pricing or {}).get(model)
        if price is not None:
            out[f"api.{model}.cost_usd"] = round(cost(u, price), 6)
            total += out[f"api.{model}.cost_usd"]
            priced = True
    if priced:
        out["cost_usd"] = round(total, 6)
    return out


def cost(usage: dict, price) -> float:
    """Dollars for one model's usage; Batch API tokens get the price's batch discount."""
    def part(tokens, batch_tokens, per_mtok):
        return ((tokens - batch_tokens) + batch_tokens * (1 - price.batch_discount)) * per_mtok / 1e6

    return (part(usage["prompt_tokens"], usage["batch_prompt_tokens"], price.input_per_mtok)
            + part(usage["completion_tokens"], usage["batch_completion_tokens"], price.output_per_mtok))


def explain(ledger: CallLedger, kept: list[CallLedger] = (), limit: int = 2000) -> list[dict]:
    """Why the last session of each stage sent requests: each miss against its nearest stored answer.

    The nearest answer, in this ledger or one kept beside it by --overwrite, has the same prompt
    (else the same seed and sample: the same row of the same shard); the fields that differ are
    what broke the match. A miss with neither is new work.
    """
    sessions = ledger.query(
        "SELECT s.session, s.stage, s.iteration FROM sessions s WHERE s.started = (SELECT MAX(t.started) FROM "
        "sessions t JOIN misses m ON m.session = t.session WHERE t.stage IS s.stage AND t.iteration IS s.iteration) "
        "ORDER BY s.iteration, s.stage")
    out = []
    for session, stage, iteration in sessions:
        misses = ledger.query("SELECT key, prompt_hash, fields, at FROM misses WHERE session = ? LIMIT ?",
                              (session, limit))
        reasons: dict[tuple, dict] = {}
        new = 0
        for key, prompt_hash, fields_json, at in misses:
            fields = json.loads(fields_json)
            near = [(book, f) for book in (ledger, *kept) for f in _near(book, key, prompt_hash, fields, at)]
            if not near:
                new += 1
                continue
            book, best = min(near, key=lambda bf: len(_differing(bf[1], fields)))
            names = tuple(_differing(best, fields))
            where = "this ledger" if book is ledger else Path(book.path).name
            entry = reasons.setdefault((names, where), {"fields": list(names), "requests": 0, "ledger": where,
                                                        "example": {n: [best.get(n), fields.get(n)] for n in names}})
            entry["requests"] += 1
        out.append({"stage": stage, "iteration": iteration, "session": session, "misses": len(misses),
                    "new": new, "broken": sorted(reasons.values(), key=lambda r: -r["requests"])})
    return out


def _near(book: CallLedger, key: str, prompt_hash: str, fields: dict, at: float) -> list[dict]:
    same = book.query("SELECT fields FROM calls WHERE key = ? AND created < ?", (key, at))
    if same:  # only in a ledger kept beside this one: the key matched, the ledger was new
        return [json.loads(f) for (f,) in same]
    rows = book.query("SELECT fields FROM calls WHERE prompt_hash = ? AND key != ? AND created < ? LIMIT 50",
                      (prompt_hash, key, at))
    if not rows and "seed" in fields:
        rows = book.query("SELECT fields FROM calls WHERE json_extract(fields, '$.seed') = ? AND "
                          "json_extract(fields, '$.sample') = ? AND key != ? AND created < ? LIMIT 50",
                          (fields["seed"], fields["sample"], key, at))
    return [json.loads(f) for (f,) in rows]


def _differing(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def attach_ledger(engine, ledger: CallLedger | None) -> None:
    """Give an engine that keeps a ledger (the openai engine) this one; other engines have nothing to ledger."""
    if ledger is not None and engine is not None and hasattr(engine, "ledger"):
        engine.ledger = ledger


def ledger_rows(ledger: CallLedger, pricing: dict | None = None) -> list[dict]:
    """One row per stage, iteration and model: answers paid for, ledger hits, tokens and (priced) dollars."""
    scopes = ledger.query("SELECT DISTINCT stage, iteration FROM calls UNION SELECT DISTINCT stage, iteration FROM "
                          "sessions WHERE session IN (SELECT session FROM lookups) ORDER BY 2, 1")
    rows = []
    for stage, iteration in scopes:
        for model, u in sorted(ledger.usage(stage, iteration).items()):
            price = (pricing or {}).get(model)
            rows.append({"stage": stage, "iter": iteration, "model": model, "answers": u["answers"],
                         "hits": u["hits"], "input tok": u["prompt_tokens"], "output tok": u["completion_tokens"],
                         "batch": u["batch_answers"], "usd": round(cost(u, price), 4) if price is not None else None})
    return rows


def batch_rows(ledger: CallLedger) -> list[dict]:
    """The Batch API jobs this ledger drove, oldest first."""
    return [{"batch": b or "(never created)", "status": s, "submission": a, "requests": n, "answered": d or 0,
             "stage": st, "iter": it}
            for b, s, a, n, d, st, it in ledger.query(
                "SELECT b.batch_id, b.status, b.attempt, COUNT(DISTINCT i.custom_id), SUM(i.state = 'done'), "
                "b.stage, b.iteration FROM batches b LEFT JOIN batch_items i USING(intent) GROUP BY b.intent "
                "ORDER BY b.created")]

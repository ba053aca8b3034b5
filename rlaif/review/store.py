"""The review store: one SQLite file per iteration (iter-K/review/review.sqlite), in WAL mode.

Tables: `meta` (the sample's design and settings), `items` (the sampled pairs), `reviewers`,
`assignments` (which items each reviewer sees, in which order, and whether the judge's chosen
response is shown on the right), `verdicts` (append-only: a changed or undone verdict adds a row,
so the history stays; the current verdict of a reviewer on an item is its latest row).
Every write is its own transaction, committed when the verdict is made; each call opens its own
connection, so several processes and threads can review at once (WAL readers never block).
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import datasets

from rlaif.errors import InputError, RunError
from rlaif.review.sampler import SampledPair, assign
from rlaif.runs import now

CHOICES = ("A", "B", "tie", "both-bad")
REVIEWER_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    item_id INTEGER PRIMARY KEY, pair_id TEXT NOT NULL UNIQUE, cell TEXT NOT NULL, weight REAL NOT NULL,
    margin REAL NOT NULL, consistent INTEGER, category TEXT, prompt TEXT NOT NULL, chosen TEXT NOT NULL,
    rejected TEXT NOT NULL, solution TEXT, judge_model TEXT, judge_kind TEXT);
CREATE TABLE reviewers (
    reviewer_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('human', 'simulated')), created_at TEXT NOT NULL);
CREATE TABLE assignments (
    reviewer_id INTEGER NOT NULL REFERENCES reviewers, item_id INTEGER NOT NULL REFERENCES items,
    position INTEGER NOT NULL, swapped INTEGER NOT NULL, PRIMARY KEY (reviewer_id, item_id));
CREATE TABLE verdicts (
    verdict_id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL REFERENCES items, reviewer_id INTEGER NOT NULL REFERENCES reviewers,
    choice TEXT CHECK (choice IN ('A', 'B', 'tie', 'both-bad')),  -- as shown; NULL = undone
    label TEXT CHECK (label IN ('chosen', 'rejected', 'tie', 'both-bad')),  -- in the judge's orientation
    note TEXT, created_at TEXT NOT NULL);
CREATE INDEX verdicts_by_reviewer_item ON verdicts (reviewer_id, item_id, verdict_id);
CREATE VIEW current_verdicts AS
    SELECT v.* FROM verdicts v
    WHERE v.verdict_id = (SELECT MAX(w.verdict_id) FROM verdicts w
                          WHERE w.reviewer_id = v.reviewer_id AND w.item_id = v.item_id)
      AND v.choice IS NOT NULL;
"""


def response_text(messages) -> str:
    """The text of a response (a chat message list, or a plain string)."""
    if isinstance(messages, str):
        return messages
    return "\n\n".join(m["content"] for m in messages)


def label_of(choice: str, swapped: bool) -> str:
    """A choice as shown (A = left) -> in the judge's orientation (chosen / rejected)."""
    if choice in ("tie", "both-bad"):
        return choice
    return "chosen" if (choice == "A") != swapped else "rejected"


def check_reviewer_name(name: str) -> str:
    if not name or len(name) > 40 or not set(name) <= REVIEWER_NAME_CHARS:
        raise InputError(f"reviewer name {name!r}: expected 1-40 characters from letters, digits, '_', '.', '-'")
    return name


def store_problem(path: Path) -> str | None:
    """What SQLite finds wrong with a store file (not a database, failed integrity check), or None."""
    try:
        con = sqlite3.connect(path, timeout=60)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        return " ".join(str(e).split())
    if rows != [("ok",)]:
        return " ".join("; ".join(r[0] for r in rows[:3]).split())
    missing = {"meta", "items", "reviewers", "assignments", "verdicts"} - tables
    return f"tables missing: {', '.join(sorted(missing))}" if missing else None


class ReviewStore:
    """Access to one review.sqlite; cheap to construct, one connection per operation."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise RunError(f"{self.path}: no review store; start one with `rlaif review RUN`")
        problem = store_problem(self.path)
        if problem:
            iteration = self.path.parent.parent.name.removeprefix("iter-").lstrip("0") or "0"
            raise RunError(f"{self.path}: damaged review store ({problem}); restore it from a copy, or move it "
                           f"away and rerun `rlaif review {self.path.parent.parent.parent} --iteration {iteration}` "
                           "to draw a new sample (its verdicts are lost)")

    @contextmanager
    def connect(self, write: bool = False):
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        con.row_factory = sqlite3.Row
        try:
            con.execute("PRAGMA busy_timeout = 60000")
            con.execute("PRAGMA synchronous = FULL")  # a verdict survives a crash once it is acknowledged
            if write:
                con.execute("BEGIN IMMEDIATE")
            yield con
            if write:
                con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    # ------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: str | Path, pairs: datasets.Dataset, sample: list[SampledPair], meta: dict) -> ReviewStore:
        """Write the sample and its design into a new store (refuses to overwrite one)."""
        path = Path(path)
        if path.exists():
            raise RunError(f"{path}: a review store exists already")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        con = sqlite3.connect(tmp)
        try:
            con.executescript(SCHEMA)
            has = set(pairs.column_names)
            rows = []
            for item_id, s in enumerate(sample):
                r = pairs[s.row]
                rows.append((item_id, str(r["pair_id"]), s.cell, s.weight, float(r["margin"]),
                             None if r["consistent"] is None else int(r["consistent"]),
                             r.get("category") if "category" in has else None, json.dumps(r["prompt"]),
                             response_text(r["chosen"]), response_text(r["rejected"]),
                             None if "solution" not in has or r["solution"] is None else str(r["solution"]),
                             r.get("judge_model"), r.get("judge_kind")))
            try:
                con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.IntegrityError as e:
                raise InputError(f"pairs table: pair_id values must be unique ({e})") from None
            con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            con.commit()
            con.execute("PRAGMA journal_mode = WAL")
        finally:
            con.close()
        tmp.replace(path)
        return cls(path)

    # ------------------------------------------------------------ reading
    def meta(self) -> dict:
        with self.connect() as con:
            return {r["key"]: json.loads(r["value"]) for r in con.execute("SELECT key, value FROM meta")}

    def num_items(self) -> int:
        with self.connect() as con:
            return con.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def reviewers(self) -> list[dict]:
        with self.connect() as con:
            return [dict(r) for r in con.execute("SELECT * FROM reviewers ORDER BY reviewer_id")]

    def register(self, name: str, kind: str = "human") -> int:
        """The reviewer's id; on first sight, record them and their assignment (order and sides)."""
        check_reviewer_name(name)
        with self.connect(write=True) as con:
            row = con.execute("SELECT reviewer_id, kind FROM reviewers WHERE name = ?", (name,)).fetchone()
            if row is not None:
                if row["kind"] != kind:
                    raise InputError(f"reviewer {name!r} is recorded as {row['kind']}, not {kind}")
                return row["reviewer_id"]
            meta = {r["key"]: json.loads(r["value"]) for r in con.execute("SELECT key, value FROM meta")}
            ids = [r[0] for r in con.execute("SELECT item_id FROM items ORDER BY item_id")]
            mode, names = meta.get("assignment", "all"), meta.get("reviewers") or []
            if mode == "split" and name not in names:
                raise InputError(f"reviewer {name!r} is not in review.reviewers {names} (assignment: split)")
            items = assign(ids, mode, names if mode == "split" else [name], meta.get("overlap", 0.0))[name]
            cur = con.execute("INSERT INTO reviewers (name, kind, created_at) VALUES (?, ?, ?)", (name, kind, now()))
            rid = cur.lastrowid
            seed = meta.get("seed", 0)
            con.executemany("INSERT INTO assignments VALUES (?, ?, ?, ?)", [
                (rid, item, pos, int(random.Random(f"{seed}:{name}:{item}").random() < 0.5))
                for pos, item in enumerate(items)])
            return rid

    def reviewer_tokens(self, names: list[str]) -> dict[str, str]:
        """Each named reviewer's own access token, created on first use and kept in the store, so the URLs
        handed out stay valid across server restarts and a verdict is recorded under its token's owner."""
        for name in names:
            check_reviewer_name(name)
        with self.connect(write=True) as con:
            con.execute("CREATE TABLE IF NOT EXISTS reviewer_tokens (name TEXT PRIMARY KEY, "
                        "token TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL)")
            for name in names:
                con.execute("INSERT OR IGNORE INTO reviewer_tokens VALUES (?, ?, ?)",
                            (name, secrets.token_urlsafe(24), now()))
            rows = con.execute(f"SELECT name, token FROM reviewer_tokens WHERE name IN ({','.join('?' * len(names))})",
                               names).fetchall()
        return {r["name"]: r["token"] for r in rows}

    def reviewer_id(self, name: str) -> int:
        with self.connect() as con:
            row = con.execute("SELECT reviewer_id FROM reviewers WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise InputError(f"unknown reviewer {name!r}")
        return row[0]

    def progress(self, reviewer_id: int) -> tuple[int, int]:
        """(answered, assigned) for one reviewer."""
        with self.connect() as con:
            total = con.execute("SELECT COUNT(*) FROM assignments WHERE reviewer_id = ?", (reviewer_id,)).fetchone()[0]
            done = con.execute("SELECT COUNT(*) FROM current_verdicts WHERE reviewer_id = ?",
                               (reviewer_id,)).fetchone()[0]
        return done, total

    def next_item(self, reviewer_id: int, after: int | None = None) -> int | None:
        """The first unanswered item in the reviewer's order (after position of `after`, wrapping)."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT a.item_id, a.position, c.verdict_id FROM assignments a LEFT JOIN current_verdicts c "
                "ON c.item_id = a.item_id AND c.reviewer_id = a.reviewer_id WHERE a.reviewer_id = ? "
                "ORDER BY a.position", (reviewer_id,)).fetchall()
        open_ = [r for r in rows if r["verdict_id"] is None]
        if after is not None:
            pos = next((r["position"] for r in rows if r["item_id"] == after), -1)
            later = [r for r in open_ if r["position"] > pos]
            open_ = later or open_
        return open_[0]["item_id"] if open_ else None

    def item_view(self, reviewer_id: int, item_id: int) -> dict:
        """What the page shows: prompt, left/right texts; the judge's side only once answered."""
        with self.connect() as con:
            row = con.execute(
                "SELECT i.*, a.position, a.swapped FROM items i JOIN assignments a ON a.item_id = i.item_id "
                "WHERE a.reviewer_id = ? AND i.item_id = ?", (reviewer_id, item_id)).fetchone()
            if row is None:
                raise InputError(f"item {item_id} is not assigned to this reviewer")
            verdict = con.execute("SELECT choice, note FROM current_verdicts WHERE reviewer_id = ? AND item_id = ?",
                                  (reviewer_id, item_id)).fetchone()
        swapped = bool(row["swapped"])
        view = {"item_id": item_id, "position": row["position"], "prompt": json.loads(row["prompt"]),
                "left": row["rejected"] if swapped else row["chosen"],
                "right": row["chosen"] if swapped else row["rejected"],
                "choice": verdict["choice"] if verdict else None, "note": verdict["note"] if verdict else None}
        if verdict is not None:  # the judge's verdict stays hidden until the reviewer has answered
            view["judge_side"] = "B" if swapped else "A"
            view["margin"] = row["margin"]
            view["consistent"] = None if row["consistent"] is None else bool(row["consistent"])
        return view

    # ------------------------------------------------------------ writing
    def record(self, reviewer_id: int, item_id: int, choice: str, note: str | None = None) -> dict:
        """Commit a verdict (a new row: an earlier verdict on the item stays in the history)."""
        if choice not in CHOICES:
            raise InputError(f"choice {choice!r}: expected one of {', '.join(CHOICES)}")
        with self.connect(write=True) as con:
            row = con.execute("SELECT swapped FROM assignments WHERE reviewer_id = ? AND item_id = ?",
                              (reviewer_id, item_id)).fetchone()
            if row is None:
                raise InputError(f"item {item_id} is not assigned to this reviewer")
            label = label_of(choice, bool(row["swapped"]))
            con.execute("INSERT INTO verdicts (item_id, reviewer_id, choice, label, note, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (item_id, reviewer_id, choice, label, note or None, now()))
        return {"item_id": item_id, "choice": choice, "label": label,
                "judge_side": "B" if row["swapped"] else "A", "agrees": label == "chosen"}

    def undo(self, reviewer_id: int) -> int | None:
        """Retract the reviewer's latest standing verdict (history kept); returns its item, or None."""
        with self.connect(write=True) as con:
            row = con.execute("SELECT item_id FROM current_verdicts WHERE reviewer_id = ? "
                              "ORDER BY verdict_id DESC LIMIT 1", (reviewer_id,)).fetchone()
            if row is None:
                return None
            con.execute("INSERT INTO verdicts (item_id, reviewer_id, choice, label, note, created_at) "
                        "VALUES (?, ?, NULL, NULL, NULL, ?)", (row["item_id"], reviewer_id, now()))
            return row["item_id"]

    # ------------------------------------------------------------ for the statistics
    def current_verdicts(self) -> list[dict]:
        """Every standing verdict with what the statistics need about its item and reviewer."""
        with self.connect() as con:
            return [dict(r) for r in con.execute(
                "SELECT c.item_id, c.choice, c.label, c.note, c.created_at, r.name AS reviewer, r.kind, "
                "a.swapped, i.pair_id, i.weight, i.margin, i.consistent, i.category, i.cell "
                "FROM current_verdicts c JOIN reviewers r USING (reviewer_id) "
                "JOIN assignments a ON a.reviewer_id = c.reviewer_id AND a.item_id = c.item_id "
                "JOIN items i ON i.item_id = c.item_id ORDER BY c.verdict_id")]

    def history(self, reviewer_id: int, item_id: int) -> list[dict]:
        with self.connect() as con:
            return [dict(r) for r in con.execute(
                "SELECT choice, label, note, created_at FROM verdicts WHERE reviewer_id = ? AND item_id = ? "
                "ORDER BY verdict_id", (reviewer_id, item_id))]

    def items(self) -> list[dict]:
        with self.connect() as con:
            return [dict(r) for r in con.execute("SELECT * FROM items ORDER BY item_id")]

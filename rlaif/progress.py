"""Progress for long stages (rate, tokens/s, ETA) and the closing summary table, on stderr via rich."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        elapsed = max(time.perf_counter() - task.fields["t0"], 1e-9)
        rate = (task.completed - task.fields["first"]) / elapsed
        tokens = task.fields.get("tokens", 0) / elapsed
        extra = f" · {tokens:,.0f} tok/s" if tokens else ""
        return Text(f"{rate:,.1f} {task.fields['unit']}/s{extra}")


class StageProgress:
    """A progress bar for one stage; `advance(k, tokens=...)` after each shard."""

    def __init__(self, name: str, total: int, done: int = 0, unit: str = "rows", enabled: bool = True):
        self.enabled = enabled
        self._progress = Progress(
            TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), _RateColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, transient=False, disable=not enabled,
        )
        self._task = self._progress.add_task(name, total=total, completed=done, unit=unit, first=done,
                                             t0=time.perf_counter(), tokens=0)

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()

    def advance(self, k: int, tokens: int = 0) -> None:
        fields = self._progress.tasks[0].fields
        self._progress.update(self._task, advance=k, tokens=fields.get("tokens", 0) + tokens)


def summary_table(title: str, rows: dict) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(str(key), f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int)
                      else str(value))
    return table


def columns_table(title: str, rows: list[dict]) -> Table:
    """Rows of equal keys as one table, a column per key (numbers right-aligned, three decimals)."""
    table = Table(title=title, show_header=True, header_style="bold")
    for key in rows[0] if rows else []:
        table.add_column(str(key), justify="right" if isinstance(rows[0][key], (int, float)) else "left")
    for row in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
    return table

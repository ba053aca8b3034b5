"""Every command in the README and docs/*.md runs, on the toy models, as a reader would type it.

The fenced `bash` (and `python`) blocks of each page run in order, in one temporary directory shared by
all pages (so `runs/toy` from the generate page is what the judges page judges), with `rlaif` on the
PATH and the shared toy cache. A block whose first line is `# not run in tests: <why>` is skipped; the
docs index declares how many there are, and the test holds them to it.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

SKIP_MARK = "# not run in tests:"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
RUNNABLE = {"bash": "bash", "sh": "bash", "python": "python"}
# Pages whose examples continue each other's run (runs/toy) come first, in the order a reader follows them.
STORY = ["docs/generate.md", "docs/judges.md", "docs/filter-export.md", "docs/review.md", "docs/training.md"]


@dataclass
class Block:
    page: str
    line: int
    language: str
    code: str

    @property
    def skipped(self) -> str | None:
        first = self.code.strip().splitlines()[0].strip()
        return first[len(SKIP_MARK):].strip() if first.startswith(SKIP_MARK) else None


def pages() -> list[str]:
    found = ["README.md"] + sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))
    return [p for p in STORY if p in found] + [p for p in found if p not in STORY]


def blocks(page: str) -> list[Block]:
    text = (REPO / page).read_text()
    return [Block(page, text[:m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)
            if m.group(1) in RUNNABLE]


ALL = [b for page in pages() for b in blocks(page)]


def test_the_docs_declare_their_commands_not_run():
    skipped = [b for b in ALL if b.skipped is not None]
    assert all(b.skipped for b in skipped), "a `# not run in tests:` line must say why"
    declared = re.search(r"There are (\d+) such blocks", (REPO / "docs" / "index.md").read_text())
    assert declared, "docs/index.md must say how many blocks are not run"
    where = ", ".join(f"{b.page}:{b.line}" for b in skipped)
    assert len(skipped) == int(declared.group(1)), f"{len(skipped)} blocks are marked not run ({where})"
    assert len(ALL) - len(skipped) >= 10, "most commands in the docs must run"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, toy_paths) -> tuple[Path, dict]:
    """A reader's directory: the repository's pipelines, `rlaif` on the PATH, the shared toy cache."""
    root = tmp_path_factory.mktemp("docs")
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    rlaif = bin_dir / "rlaif"
    rlaif.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rlaif.cli "$@"\n')
    rlaif.chmod(rlaif.stat().st_mode | stat.S_IEXEC)
    (root / "pipelines").symlink_to(REPO / "pipelines")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "RLAIF_CACHE": os.environ["RLAIF_CACHE"], "COLUMNS": "200"}
    return root, env


@pytest.mark.slow
def test_every_command_in_the_docs_runs(workdir):
    root, env = workdir
    ran = 0
    for block in ALL:
        if block.skipped is not None:
            continue
        if RUNNABLE[block.language] == "python":
            script = root / ".block.py"
            script.write_text(block.code)
            command = [sys.executable, str(script)]
        else:
            command = ["bash", "-euo", "pipefail", "-c", block.code]
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (f"{block.page}:{block.line} failed (exit {result.returncode}):\n"
                                        f"{block.code}\n--- stderr ---\n{result.stderr[-3000:]}")
        ran += 1
    assert ran == len([b for b in ALL if b.skipped is None])


LINK = re.compile(r"\]\(([^)\s]+)\)")
# Pages written alongside this one (the toy world, testing, a real model, rewards, API scale, judge quality).
ELSEWHERE = {"docs/toy-world.md", "docs/testing.md", "docs/real-model.md", "docs/rewards.md", "docs/api-scale.md",
             "docs/judge-quality.md"}


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_resolve():
    broken = []
    for page in pages():
        for target in LINK.findall((REPO / page).read_text()):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            resolved = ((REPO / page).parent / path).resolve() if path else REPO / page
            name = str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)
            if not resolved.exists():
                if name not in ELSEWHERE:
                    broken.append(f"{page}: {target}")
                continue
            if anchor and resolved.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", resolved.read_text(), re.MULTILINE)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{page}: {target} (no such heading)")
    assert not broken, "\n".join(broken)

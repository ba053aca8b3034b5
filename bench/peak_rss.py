"""Run one `rlaif` command and print the peak resident memory of its process and of its largest child.

    .venv/bin/python bench/peak_rss.py generate --input prompts.jsonl --model toy:policy --out runs/x -q

The figures are each process's own high-water mark (VmHWM in /proc/PID/status), read for this process
when the command ends and for its children (vLLM's engine core) every 50 ms while they live. A
process's `ru_maxrss` is no such figure: a child started with fork + exec keeps the RSS its parent
had at the fork as its starting maximum, so a benchmark that has loaded a model would see that
model's memory in every command it starts. Last line: `RSS <process MB> <largest child MB>`.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path


def high_water_mb(pid: int | str = "self") -> float:
    """VmHWM of one live process, in MB (0 when it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


def watch_children(peaks: dict[int, float], stop: threading.Event) -> None:
    import psutil

    me = psutil.Process()
    while not stop.wait(0.05):
        for child in me.children(recursive=True):
            peaks[child.pid] = max(peaks.get(child.pid, 0.0), high_water_mb(child.pid))


def main() -> None:
    from rlaif.cli import app

    peaks: dict[int, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_children, args=(peaks, stop), daemon=True)
    watcher.start()
    sys.argv = ["rlaif", *sys.argv[1:]]
    try:
        app(standalone_mode=False)
    finally:
        stop.set()
        watcher.join()
        print("RSS", round(high_water_mb(), 1), round(max(peaks.values(), default=0.0), 1), flush=True)


if __name__ == "__main__":
    main()

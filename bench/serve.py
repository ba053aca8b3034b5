"""Benchmark: `rlaif serve` under 1, 4 and 16 concurrent clients, against calling the judge in-process.

    RLAIF_CACHE=.cache/rlaif .venv/bin/python bench/serve.py [--seconds 10] [--max-wait-ms 2] [--threads 1]

Two toy judges are served (--judge): the likelihood judge (`toy:judge`: prompt + answer, ~20 tokens)
and the pointwise rubric judge (`toy:judge`, template `toy-pointwise`, ~85 tokens). Every request
carries one completion, as OpenRLHF's remote reward client sends them (`POST /get_reward`, one
query). The server runs in a subprocess (`rlaif serve`); the clients are asyncio aiohttp clients (the
library OpenRLHF's client uses) in this process, each sending its next request as soon as the last
is answered.
Rows:
  in-process, 1 completion per call   the reward function called directly, one completion at a time
  in-process, 16 per call             the same, 16 completions per call (the batching ceiling)
  server, C clients                   requests/s and client-side p50/p99 latency, C = 1, 4, 16
  server, 1 client, no wait           the single client without the batch wait (--max-wait-ms 0)
  server, 16 clients, no batching     the control: the same server with --max-batch-size 1
Server and in-process judge use the same torch thread count (--threads, default 1: on a shared
machine, two threads per forward pass wait on each other).
The target, on the likelihood judge: at 16 clients, requests/s >= 3x the requests/s at 1 client (exit
status 1 if not). The pointwise judge's rows are reported without a target: on a CPU its ~85-token
prompts already fill the cores at batch 1 (compare its two in-process rows), so batching has
little to amortise there (a GPU, which one short prompt leaves mostly idle, has far more).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RLAIF_CACHE", str(ROOT / ".cache" / "rlaif"))
TARGET = 3.0


def problems(n: int) -> list[tuple[str, str]]:
    from rlaif import toy

    return [(toy.question(a, b), str(a + b)) for a, b in (toy.problems()["test"] * 4)[:n]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, requests: int, seconds: float, latencies: list[float], **extra) -> dict:
    return {"setting": name, "requests": requests, "requests_per_s": requests / seconds,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99), **extra}


JUDGES = {"likelihood": ["--judge", "likelihood", "-m", "toy:judge"],
          "pointwise": ["--judge", "pointwise", "-m", "toy:judge", "--template", "toy-pointwise"]}


def in_process(judge: str, seconds: float, per_call: int) -> dict:
    from rlaif.rewards import likelihood_reward, pointwise_reward

    if judge == "likelihood":
        reward = likelihood_reward(model="toy:judge")
    else:
        reward = pointwise_reward(model="toy:judge", template="toy-pointwise")
    items = problems(4096)
    reward([items[0][1]], prompts=[items[0][0]])  # warm up
    latencies, done, k = [], 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        chunk = [items[(k + j) % len(items)] for j in range(per_call)]
        k += per_call
        t = time.perf_counter()
        reward([a for _, a in chunk], prompts=[q for q, _ in chunk])
        latencies.append(time.perf_counter() - t)
        done += per_call
    elapsed = time.perf_counter() - t0
    return row(f"in-process, {per_call} completion{'s' if per_call > 1 else ''} per call", done, elapsed,
               latencies, note="requests = completions")


class Server:
    """`rlaif serve` in a subprocess, on a free loopback port."""

    def __init__(self, judge: str, *args: str):
        cmd = [sys.executable, "-m", "rlaif.cli", "serve", *JUDGES[judge], "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = self.proc.stdout.readline()
        if " at http" not in line:
            raise SystemExit(f"rlaif serve did not start: {line!r}")
        self.url = line.split(" at ")[1].split()[0]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def load(url: str, clients: int, seconds: float) -> tuple[int, float, list[float]]:
    """`clients` closed-loop clients, each with its own keep-alive session (aiohttp, OpenRLHF's client library)."""
    try:
        import aiohttp
    except ImportError:
        raise SystemExit("bench/serve.py needs aiohttp, the HTTP client OpenRLHF uses: pip install aiohttp") from None

    items = problems(4096)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(c: int) -> int:
        sent = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            while time.perf_counter() < stop:
                q, a = items[(c * 997 + sent) % len(items)]
                t = time.perf_counter()
                async with http.post(f"{url}/get_reward", json={"query": [q + a], "prompts": [q]}) as r:
                    r.raise_for_status()
                    await r.json()
                latencies.append(time.perf_counter() - t)
                sent += 1
        return sent

    t0 = time.perf_counter()
    sent = await asyncio.gather(*(client(c) for c in range(clients)))
    return sum(sent), time.perf_counter() - t0, latencies


def against_server(judge: str, clients: list[int], seconds: float, *args: str, label: str = "") -> list[dict]:
    import httpx

    server = Server(judge, *args)
    try:
        asyncio.run(load(server.url, 2, 1.0))  # warm up: first forward passes, connection setup
        rows = []
        for c in clients:
            before = httpx.get(f"{server.url}/metrics").json()
            n, elapsed, latencies = asyncio.run(load(server.url, c, seconds))
            after = httpx.get(f"{server.url}/metrics").json()
            batches = after["batches"] - before["batches"]
            rows.append(row(f"server, {c} client{'s' if c > 1 else ''}{label}", n, elapsed, latencies,
                            mean_batch=(after["completions"] - before["completions"]) / batches if batches else None))
        return rows
    finally:
        server.close()


def measure(judge: str, seconds: float, max_wait_ms: float) -> tuple[list[dict], float]:
    """All rows for one judge, and the 16-clients / 1-client ratio of requests/s."""
    rows = [in_process(judge, seconds, 1), in_process(judge, seconds, 16)]
    served = against_server(judge, [1, 4, 16], seconds, "--max-wait-ms", str(max_wait_ms))
    no_wait = against_server(judge, [1], seconds, "--max-wait-ms", "0", label=", no wait")
    control = against_server(judge, [16], seconds, "--max-batch-size", "1", label=", no batching")
    return rows + served + no_wait + control, served[2]["requests_per_s"] / served[0]["requests_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", choices=[*JUDGES, "both"], default="both", help="Which toy judge to serve.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each measured phase.")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="The server's batch wait bound.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in-process and in the server.")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by torch at import, here and in the server

    from rich.console import Console
    from rich.table import Table

    from rlaif import toy

    toy.build()
    console = Console()
    passed = True
    for judge in JUDGES if args.judge == "both" else [args.judge]:
        rows, ratio = measure(judge, args.seconds, args.max_wait_ms)
        table = Table(title=f"rlaif serve · toy {judge} judge · {date.today()} · {platform.machine()}, "
                            f"{os.cpu_count()} CPUs, {args.threads} torch thread(s)", header_style="bold")
        for col in ("setting", "requests", "requests/s", "p50 ms", "p99 ms", "mean batch"):
            table.add_column(col, justify="left" if col == "setting" else "right")
        for r in rows:
            mean_batch = r.get("mean_batch")
            table.add_row(r["setting"], str(r["requests"]), f"{r['requests_per_s']:.1f}", f"{r['p50_ms']:.1f}",
                          f"{r['p99_ms']:.1f}", "" if mean_batch is None else f"{mean_batch:.1f}")
        console.print(table)
        by = {r["setting"]: r["requests_per_s"] for r in rows}
        sixteen = by["server, 16 clients"]
        target = f"target >= {TARGET}x" if judge == "likelihood" else "no target"
        console.print(f"{judge}: 16 clients / 1 client {ratio:.2f}x requests/s ({target}); "
                      f"/ 1 client without the wait {sixteen / by['server, 1 client, no wait']:.2f}x; "
                      f"batched / not batched at 16 clients {sixteen / by['server, 16 clients, no batching']:.2f}x; "
                      f"in-process 16 per call / 1 per call "
                      f"{by['in-process, 16 completions per call'] / by['in-process, 1 completion per call']:.2f}x")
        if judge == "likelihood":
            passed = ratio >= TARGET
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()

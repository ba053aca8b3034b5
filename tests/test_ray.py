"""The Ray executor on a real local Ray instance (started once for this module), against the local executor.

One small job (32 toy prompts in 8 shards, 4 sampled candidates each, then the likelihood judge)
runs locally once; every Ray run is compared with it: same shard files, same candidates, same
judgments, also after a replica is killed mid-run and after the driver is killed and rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
import ray
import torch

from rlaif.config import load_config
from rlaif.runs import load_table, read_manifest, stage_dir
from rlaif.stages.generate import run_generate
from rlaif.stages.judge import run_judge

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RLAIF = [sys.executable, "-m", "rlaif.cli"]

SHARDS = 8
PROMPTS_PER_SHARD = 4
N = 4
THREADS = 1  # torch threads of the local run and of every replica: float sums depend on it
SCORE_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def prompts_file(toy_paths, tmp_path_factory):
    path = tmp_path_factory.mktemp("ray") / "prompts.jsonl"
    path.write_text("\n".join(toy_paths["prompts-test"].read_text().splitlines()[:PROMPTS_PER_SHARD * SHARDS]) + "\n")
    return path


def job(prompts_file, executor="local", **sets):
    base = {"generate.input": str(prompts_file), "generate.model": "toy:policy", "generate.n": N,
            "generate.max_new_tokens": 6, "generate.temperature": 1.0, "generate.shard_size": PROMPTS_PER_SHARD,
            "judge.kind": "likelihood", "judge.model": "toy:judge", "judge.shard_size": 6, "seed": 11,
            "executor": executor, "ray.replicas": 2, "ray.num_cpus": 1, "ray.torch_threads": THREADS}
    return load_config(flags={**base, **sets})


@pytest.fixture(scope="module")
def local_run(prompts_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("local-run")
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        cfg = job(prompts_file)
        run_generate(cfg, str(run), progress=False)
        run_judge(cfg, str(run), progress=False)
    finally:
        torch.set_num_threads(before)
    return run


def shard_files(run, stage="generate", table="candidates"):
    return {p.name: p.read_bytes() for p in sorted((stage_dir(run, stage) / table).glob("part-*.parquet"))}


def assert_same_candidates(run, local_run):
    """Same shard names and contents as the local run, and every (prompt, candidate) exactly once."""
    assert read_manifest(stage_dir(run, "generate")).status == "complete"
    ours, theirs = shard_files(run), shard_files(local_run)
    assert sorted(ours) == sorted(theirs) and len(ours) == SHARDS
    for name in theirs:
        assert pq.read_table(stage_dir(run, "generate") / "candidates" / name).equals(
            pq.read_table(stage_dir(local_run, "generate") / "candidates" / name)), name
    rows = load_table(stage_dir(run, "generate"), "candidates")
    keys = list(zip(rows["prompt_id"], rows["candidate_index"]))
    assert len(keys) == len(set(keys)) == PROMPTS_PER_SHARD * SHARDS * N


def test_ray_generate_and_judge_match_local(ray_instance, prompts_file, local_run, tmp_path):
    cfg = job(prompts_file, "ray")
    gen = run_generate(cfg, str(tmp_path), progress=False)
    assert gen.num_shards == SHARDS and gen.summary["candidates"] == PROMPTS_PER_SHARD * SHARDS * N
    assert_same_candidates(tmp_path, local_run)
    # the Arrow files carry the same datasets features: the shard files are byte for byte the same
    assert shard_files(tmp_path) == shard_files(local_run)
    local_manifest = read_manifest(stage_dir(local_run, "generate"))
    assert gen.config_hash == local_manifest.config_hash and sorted(gen.shards) == sorted(local_manifest.shards)

    judged = run_judge(cfg, str(tmp_path), progress=False)
    assert judged.status == "complete" and judged.num_shards == 6  # 32 prompts, 6 per shard
    ours = load_table(stage_dir(tmp_path, "judge"), "scores").to_list()
    theirs = load_table(stage_dir(local_run, "judge"), "scores").to_list()
    assert [(r["prompt_id"], r["candidate_index"], r["rank"]) for r in ours] == \
           [(r["prompt_id"], r["candidate_index"], r["rank"]) for r in theirs]
    assert all(r["score"] is not None for r in ours)
    assert max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs)) <= SCORE_TOLERANCE


def replica_actors() -> dict[str, dict]:
    """The replica actors of the cluster's actor table (no dashboard needed), by actor id."""
    return {actor_id: a for actor_id, a in ray._private.state.actors().items() if "ShardReplica" in a["ActorClassName"]}


def test_killed_replica_is_restarted_and_no_row_is_lost_or_doubled(ray_instance, prompts_file, local_run, tmp_path):
    cfg = job(prompts_file, "ray")
    before = set(replica_actors())
    errors: list[BaseException] = []

    def drive():
        try:
            run_generate(cfg, str(tmp_path), progress=False)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    driver = threading.Thread(target=drive)
    driver.start()
    manifest_dir = stage_dir(tmp_path, "generate")
    deadline = time.monotonic() + 120
    victim = done_at_kill = None
    # kill the first replica that has loaded its engine: from then on it is taking shards
    while driver.is_alive() and time.monotonic() < deadline:
        alive = [i for i, a in replica_actors().items() if i not in before and a["State"] == "ALIVE"]
        if alive:
            victim = alive[0]
            core = ray._private.worker.global_worker.core_worker
            ray.kill(core.get_actor_handle(ray.ActorID.from_hex(victim)), no_restart=False)
            manifest = read_manifest(manifest_dir)
            done_at_kill = len(manifest.shards) if manifest else 0
            break
        time.sleep(0.01)
    driver.join(timeout=180)
    assert not errors, errors
    assert victim is not None, "no replica was killed: the job ended before a replica was seen alive"
    assert done_at_kill < SHARDS, f"all {SHARDS} shards were done when the replica was killed"
    assert replica_actors()[victim]["NumRestarts"] >= 1  # Ray restarted it, and retried its shards
    assert_same_candidates(tmp_path, local_run)


def test_killed_driver_rerun_resumes_then_judge_cli(ray_instance, prompts_file, local_run, tmp_path):
    args = [*RLAIF, "generate", "--input", prompts_file, "--model", "toy:policy", "--out", tmp_path,
            "--n", str(N), "--max-new-tokens", "6", "--temperature", "1.0", "--shard-size", str(PROMPTS_PER_SHARD), "--seed", "11",
            "--executor", "ray", "--quiet", "--set", f"ray.address={ray_instance}", "--set", "ray.replicas=2",
            "--set", f"ray.torch_threads={THREADS}"]
    args = list(map(str, args))
    manifest_path = stage_dir(tmp_path, "generate") / "manifest.json"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, done_at_kill = time.monotonic() + 180, None
    while proc.poll() is None and time.monotonic() < deadline:
        if manifest_path.exists() and json.loads(manifest_path.read_text())["shards"]:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            done_at_kill = len(json.loads(manifest_path.read_text())["shards"])
            break
        time.sleep(0.02)
    assert done_at_kill is not None, f"the driver finished or failed before it could be killed: {proc.communicate()}"
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= done_at_kill < SHARDS
    first = {k: v.seconds for k, v in read_manifest(manifest_path.parent).shards.items()}

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    manifest = read_manifest(manifest_path.parent)
    assert manifest.status == "complete"
    # shards finished before the kill were kept, not recomputed
    assert all(manifest.shards[k].seconds == s for k, s in first.items())
    assert_same_candidates(tmp_path, local_run)

    # the judge command on the same replicas' cluster: scores as the local judge gave them
    judge = subprocess.run([*RLAIF, "judge", str(tmp_path), "--judge", "likelihood", "--model", "toy:judge",
                            "--executor", "ray", "--quiet", "--set", "judge.shard_size=6"],
                           capture_output=True, text=True, timeout=300)
    assert judge.returncode == 0, judge.stderr[-2000:]
    ours = load_table(stage_dir(tmp_path, "judge"), "scores")["score"]
    theirs = load_table(stage_dir(local_run, "judge"), "scores")["score"]
    assert len(ours) == len(theirs) and max(abs(a - b) for a, b in zip(ours, theirs)) <= SCORE_TOLERANCE

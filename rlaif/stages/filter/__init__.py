"""The filter stage: judged candidates in, preference pairs and dropped rows (each with its reason) out.

    stage.py   the stage: filters per candidate, prompt and pair; `filter_shard`, `filter_pairs`, `run_filter`
    pairs.py   from one prompt's ranked candidates to oriented pairs (the strategies)
    dedup.py   exact and near-duplicate detection (MinHash + LSH)
"""

from rlaif.stages.filter.stage import filter_pairs, filter_shard, run_filter

__all__ = ["filter_pairs", "filter_shard", "run_filter"]

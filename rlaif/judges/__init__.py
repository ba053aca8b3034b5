"""Every judge behind one of two protocols (scoring, pairwise); `build_judge` makes the one a config names."""

from __future__ import annotations

from rlaif.engines import load_engine, resolve_model
from rlaif.errors import ConfigError
from rlaif.judges.base import CandidateItem, PairItem, PairwiseJudge, Provenance, Score, ScoringJudge
from rlaif.judges.likelihood import LikelihoodJudge
from rlaif.judges.pairwise import PairwiseJudge as Pairwise
from rlaif.judges.pointwise import PointwiseJudge
from rlaif.judges.verifier import VerifierJudge

__all__ = ["CandidateItem", "PairItem", "PairwiseJudge", "Provenance", "Score", "ScoringJudge", "build_judge"]


def build_judge(cfg, engine=None, seed: int = 0):
    """The judge a `JudgeConfig` names; `engine` reuses an already loaded model (model judges)."""
    if cfg.kind == "verifier":
        return VerifierJudge(cfg.verifier)
    if cfg.kind == "reward-model":
        from rlaif.judges.reward_model import RewardModelJudge

        return RewardModelJudge(resolve_model(cfg.model, "judge.model"), display_name=cfg.model, device=cfg.device,
                                dtype=cfg.dtype, batch_size=cfg.batch_size)
    if engine is None:
        if not cfg.model:
            raise ConfigError(f"field 'judge.model' is required for a {cfg.kind} judge: a model name or path, or a "
                              "registered source such as toy:judge (flag --model)")
        engine = load_engine(cfg, "judge")
    if cfg.kind == "likelihood":
        return LikelihoodJudge(engine, length_normalize=cfg.length_normalize)
    if cfg.kind == "pairwise":
        return Pairwise(engine, cfg.template or "pairwise", mode=cfg.mode, verdicts=cfg.verdict_tokens,
                        tie_band=cfg.tie_band, delimiters=cfg.delimiters, max_new_tokens=cfg.max_new_tokens,
                        cot_max_new_tokens=cfg.cot_max_new_tokens, parse_retries=cfg.parse_retries, seed=seed)
    return PointwiseJudge(engine, cfg.template or "additive", mode=cfg.mode, verdicts=cfg.verdict_tokens,
                          aspects=cfg.aspects, delimiters=cfg.delimiters, max_new_tokens=cfg.max_new_tokens,
                          parse_retries=cfg.parse_retries, seed=seed)

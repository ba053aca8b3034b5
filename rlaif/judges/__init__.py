"""Every judge behind one of two protocols (scoring, pairwise); `build_judge` makes the one a config names."""

from __future__ import annotations

from rlaif.judges.base import CandidateItem, PairItem, PairwiseJudge, Provenance, Score, ScoringJudge

__all__ = ["CandidateItem", "PairItem", "PairwiseJudge", "Provenance", "Score", "ScoringJudge", "build_judge"]


def build_judge(cfg, engine=None, seed: int = 0):
    """The judge a `JudgeConfig` names; `engine` reuses an already loaded model (model judges)."""
    from rlaif.errors import ConfigError

    if cfg.kind == "verifier":
        from rlaif.judges.verifier import VerifierJudge

        return VerifierJudge(cfg.verifier)
    if cfg.kind == "reward-model":
        from rlaif.engines import resolve_model
        from rlaif.judges.reward_model import RewardModelJudge

        return RewardModelJudge(resolve_model(cfg.model, "judge.model"), display_name=cfg.model, device=cfg.device,
                                dtype=cfg.dtype, batch_size=cfg.batch_size)
    if engine is None:
        if not cfg.model:
            raise ConfigError(f"field 'judge.model' is required for a {cfg.kind} judge: a model name or path, or "
                              "toy:judge (flag --model)")
        from rlaif.engines import load_engine

        engine = load_engine(cfg, "judge")
    if cfg.kind == "likelihood":
        from rlaif.judges.likelihood import LikelihoodJudge

        return LikelihoodJudge(engine, length_normalize=cfg.length_normalize)
    if cfg.kind == "pairwise":
        from rlaif.judges.pairwise import PairwiseJudge as Pairwise

        return Pairwise(engine, cfg.template or "pairwise", mode=cfg.mode, verdicts=cfg.verdict_tokens,
                        tie_band=cfg.tie_band, delimiters=cfg.delimiters, max_new_tokens=cfg.max_new_tokens,
                        cot_max_new_tokens=cfg.cot_max_new_tokens, parse_retries=cfg.parse_retries, seed=seed)
    from rlaif.judges.pointwise import PointwiseJudge

    return PointwiseJudge(engine, cfg.template or "additive", mode=cfg.mode, verdicts=cfg.verdict_tokens,
                          aspects=cfg.aspects, delimiters=cfg.delimiters, max_new_tokens=cfg.max_new_tokens,
                          parse_retries=cfg.parse_retries, seed=seed)

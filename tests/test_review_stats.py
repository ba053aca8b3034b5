"""Agreement statistics, the sampler's design and the gate, against hand-computed values."""

from __future__ import annotations

import datasets
import pytest
from scipy.stats import binomtest

from rlaif.config import PipelineConfig, ReviewConfig, load_config
from rlaif.errors import ConfigError
from rlaif.review.sampler import allocate, assign, draw_sample
from rlaif.review.stats import agreement_block, kappa, review_statistics, weighted_agreement, wilson_interval
from review_support import toy_pairs


def test_wilson_interval_matches_hand_computed_and_scipy():
    # 8 of 10, z = 1.959964: centre (0.8 + 0.19208) / 1.38415 = 0.71682, half 0.22644 -> (0.4902, 0.9433)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    ref = binomtest(37, 50).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(37, 50) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert wilson_interval(0, 0) is None
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == pytest.approx(1.0)


def test_cohen_kappa_on_known_tables():
    # 2x2 table [[20, 5], [10, 15]]: po = .7, pe = (25*30 + 25*20) / 2500 = .5, kappa = .4
    a = ["A"] * 25 + ["B"] * 25
    b = ["A"] * 20 + ["B"] * 5 + ["A"] * 10 + ["B"] * 15
    assert kappa(a, b, ["A", "B", "tie", "both-bad"]) == pytest.approx(0.4)
    # perfect agreement -> 1; a human who always says "tie" against a judge that says A/B -> 0
    assert kappa(a, a, ["A", "B"]) == pytest.approx(1.0)
    assert kappa(a, ["tie"] * 50, ["A", "B", "tie", "both-bad"]) == pytest.approx(0.0)
    assert kappa(["A"], ["A"], ["A", "B"]) is None  # undefined on one item


def verdict(item, label, *, reviewer="r1", weight=1.0, margin=0.5, consistent=1, swapped=0, kind="human"):
    shown = {"chosen": "B" if swapped else "A", "rejected": "A" if swapped else "B"}.get(label, label)
    return {"item_id": item, "label": label, "choice": shown, "reviewer": reviewer, "kind": kind, "weight": weight,
            "margin": margin, "consistent": consistent, "swapped": swapped, "pair_id": f"p{item}"}


def test_ties_and_both_bad_count_as_not_agreeing_except_in_decisive_agreement():
    vs = [verdict(0, "chosen"), verdict(1, "chosen"), verdict(2, "rejected"), verdict(3, "tie"), verdict(4, "both-bad")]
    block = agreement_block(vs)
    assert block["agreement"] == pytest.approx(2 / 5)
    assert block["decisive_agreement"] == pytest.approx(2 / 3)
    assert block["tie_rate"] == pytest.approx(0.2) and block["both_bad_rate"] == pytest.approx(0.2)
    assert block["agreement_ci95"] == pytest.approx(wilson_interval(2, 5))


def test_weighted_agreement_undoes_oversampling():
    # item 0 stands for 9 pairs (agree), items 1 and 2 for 1 pair each (disagree): (9) / (11)
    vs = [verdict(0, "chosen", weight=9.0), verdict(1, "rejected"), verdict(2, "rejected")]
    w = weighted_agreement(vs)
    assert w["weighted_agreement"] == pytest.approx(9 / 11)
    assert w["effective_n"] == pytest.approx(11 ** 2 / (81 + 1 + 1))
    # two reviewers on one item share its weight
    vs2 = [verdict(0, "chosen", weight=4.0), verdict(0, "rejected", weight=4.0, reviewer="r2"), verdict(1, "chosen")]
    assert weighted_agreement(vs2)["weighted_agreement"] == pytest.approx((2 + 1) / 5)


def test_review_statistics_kappa_between_reviewers_and_buckets():
    labels1 = ["chosen", "chosen", "rejected", "tie", "chosen", "both-bad"]
    labels2 = ["chosen", "rejected", "rejected", "tie", "chosen", "chosen"]
    vs = [verdict(i, l, reviewer="ann", margin=i / 10, swapped=i % 2) for i, l in enumerate(labels1)]
    vs += [verdict(i, l, reviewer="bob", margin=i / 10, consistent=0) for i, l in enumerate(labels2)]
    design = {"sample_size": 6, "total_pairs": 6, "margin_quartiles": [0.1, 0.25, 0.4]}
    stats = review_statistics(vs, design, [{"name": "ann", "kind": "human"}, {"name": "bob", "kind": "human"}])
    assert stats["items"] == 6 and stats["verdicts"] == 12 and stats["simulated"] is False
    pair = stats["between_reviewers"]["ann vs bob"]
    assert pair["items"] == 6 and pair["raw_agreement"] == pytest.approx(4 / 6)
    from sklearn.metrics import cohen_kappa_score
    assert pair["kappa"] == pytest.approx(cohen_kappa_score(labels1, labels2))
    assert stats["by_consistency"]["inconsistent"]["verdicts"] == 6
    assert sum(b["verdicts"] for b in stats["by_margin"].values()) == 12
    assert stats["by_margin"]["q1 (smallest margins)"]["verdicts"] == 4  # margins 0 and .1, both reviewers


def test_allocation_is_proportional_capped_and_sees_every_stratum():
    alloc = allocate({"big": 900, "small": 10, "tiny": 2}, {"big": 1.0, "small": 3.0, "tiny": 1.0}, 100)
    assert sum(alloc.values()) == 100 and alloc["tiny"] >= 1
    assert alloc["small"] == pytest.approx(100 * 30 / 932, abs=1.5)
    assert allocate({"x": 3, "y": 4}, {"x": 1.0, "y": 5.0}, 50) == {"x": 3, "y": 4}  # capped at the cell sizes


def test_sample_is_seeded_stratified_and_weights_restore_the_total():
    pairs = datasets.Dataset.from_list(toy_pairs(300, seed=3))
    cfg = ReviewConfig(sample_size=60)
    sample, design = draw_sample(pairs, cfg, seed=7)
    again, _ = draw_sample(pairs, cfg, seed=7)
    other, _ = draw_sample(pairs, cfg, seed=8)
    assert [s.row for s in sample] == [s.row for s in again] != [s.row for s in other]
    assert len({s.row for s in sample}) == 60
    assert sum(s.weight for s in sample) == pytest.approx(300)  # Horvitz-Thompson: weights sum to the set
    cells = design["cells"]
    assert {c.split("/")[0] for c in cells} == {"carry", "no-carry"}
    rate = {c: v["drawn"] / v["pairs"] for c, v in cells.items()}
    assert rate["carry/inconsistent"] > 2 * rate["carry/confident"]  # over-sampled doubtful pairs
    assert rate["no-carry/uncertain"] > 2 * rate["no-carry/confident"]


def test_fraction_and_split_assignment():
    pairs = datasets.Dataset.from_list(toy_pairs(50))
    sample, _ = draw_sample(pairs, ReviewConfig(sample_fraction=0.2), seed=0)
    assert len(sample) == 10
    shares = assign(list(range(20)), "split", ["ann", "bob", "cy"], overlap=0.25)
    shared = set(range(5))
    assert all(shared <= set(v) for v in shares.values())
    assert sorted(i for v in shares.values() for i in v if i >= 5) == list(range(5, 20))  # each once


def test_review_config_errors_name_the_field(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("review:\n  sample_size: 10\n  sample_fraction: 0.5\n")
    with pytest.raises(ConfigError, match="sample_size or review.sample_fraction"):
        load_config(path)
    path.write_text("review:\n  reviewer: robot\n")
    with pytest.raises(ConfigError, match="review.reviewer.*robot"):
        load_config(path)
    assert PipelineConfig().review.min_agreement == 0.7

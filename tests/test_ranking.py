"""Ranking: Bradley-Terry recovers known orders; schedules compare the right pairs, batched across prompts."""

import numpy as np
import pytest

from rlaif import toy
from rlaif.judges.base import Provenance, combine
from rlaif.judges.ranking import bradley_terry, copeland, fit_strengths, rank_groups, ranks_of, schedule_pairs
from rlaif.records import Judgment


def test_bradley_terry_recovers_a_known_order_from_noisy_soft_comparisons():
    rng = np.random.default_rng(0)
    truth = np.array([2.0, -1.0, 0.5, 1.2, -2.0, 0.0])
    comps = []
    for i in range(6):
        for j in range(i + 1, 6):
            for _ in range(3):  # noisy soft labels around the true probability
                p = 1 / (1 + np.exp(-(truth[i] - truth[j])))
                comps.append((i, j, float(np.clip(p + rng.normal(0, 0.05), 0, 1))))
    s = bradley_terry(6, comps)
    assert ranks_of(s) == ranks_of(truth)
    assert abs(s.mean()) < 1e-6
    assert np.corrcoef(s, truth)[0, 1] > 0.98


def test_bradley_terry_stays_finite_when_one_candidate_wins_everything_and_handles_ties():
    s = bradley_terry(3, [(0, 1, 1.0), (0, 2, 1.0), (1, 2, 0.5)])
    assert np.isfinite(s).all() and s[0] > s[1] and s[1] == pytest.approx(s[2], abs=1e-6)
    assert ranks_of(s) == [0, 1, 2]  # equal strengths keep index order


def test_copeland_counts_wins_and_ignores_ties():
    assert copeland(3, [(0, 1, 0.9), (1, 2, 0.2), (0, 2, 0.52)], tie_band=0.05).tolist() == [1.0, -2.0, 1.0]
    strengths, method = fit_strengths(3, [(0, 1, 0.9)], method="copeland")
    assert method == "copeland" and strengths.tolist() == [1.0, -1.0, 0.0]


def test_schedules():
    assert len(schedule_pairs(list(range(5)), "all-pairs")) == 10
    assert schedule_pairs([3, 4, 5], "pivot") == [(3, 4), (3, 5)]
    assert schedule_pairs([0, 1, 2, 3, 4], "knockout") == [(0, 1), (2, 3)]


class CheckerPairwiseJudge:
    """The toy checker as a pairwise judge (closer sums win, more surely the closer), counting its batches."""

    kind = "pairwise"
    provenance = Provenance("pairwise", "checker", "python")

    def __init__(self):
        self.batches = []

    def compare(self, pairs):
        self.batches.append(len(pairs))
        out = []
        for p in pairs:
            a, b = p.prompt[0]["content"][8:-1].split("+")
            target = int(a) + int(b)

            def p_first(x, y):
                dx, dy = abs(int(x) - target), abs(int(y) - target)
                return float(1 / (1 + np.exp((dx - dy) / 10)))  # graded: a closer sum wins more surely

            ab, ba = p_first(p.text_a, p.text_b), p_first(p.text_b, p.text_a)
            out.append(Judgment(prompt_id=p.prompt_id, candidate_a=p.a, candidate_b=p.b, p_a_first=ab, p_b_first=ba,
                                **combine(ab, ba, 0.05), **self.provenance.columns()))
        return out


@pytest.mark.parametrize("schedule,comparisons", [("all-pairs", 10), ("pivot", 4), ("knockout", 4)])
def test_rank_groups_finds_the_best_candidate_with_each_schedule(schedule, comparisons):
    groups, prompts = {}, {}
    for a, b in toy.problems()["test"][:3]:
        pid = f"add-{a}-{b}"
        prompts[pid] = [{"role": "user", "content": toy.question(a, b)}]
        # candidate 3 is right; the others are further and further off
        groups[pid] = [(k, str(a + b + off)) for k, off in enumerate([30, 20, 10, 0, 40])]
    judge = CheckerPairwiseJudge()
    judgments, ranking = rank_groups(groups, prompts, judge, schedule)
    assert len(judgments) == 3 * comparisons
    for per in ranking.values():
        assert per[3][1] == 0  # the right answer ranks first
        if schedule == "all-pairs":
            assert [per[k][1] for k in range(5)] == [3, 2, 1, 0, 4]
    # each round is one batch across all three prompts
    assert judge.batches[0] == 3 * len(schedule_pairs(list(range(5)), schedule))
    assert len(judge.batches) == (3 if schedule == "knockout" else 1)

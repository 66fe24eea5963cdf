"""The transition point by hand on synthetic margin curves."""

from __future__ import annotations

import numpy as np
import pytest

from phaselens.phases import jump_index, transition_ci, transition_index, transition_indices


@pytest.mark.parametrize(
    "margins, expected",
    [
        ([-1, -2, -0.5, 0.3, 1.0, 2.0], 3),
        ([-1, 0.5, -0.1, 0.3, 1.0], 3),  # a positive blip before a dip does not count
        ([0.1, 0.2, 0.3], 0),
        ([-1, 0.0, 0.4], 2),  # zero is not positive
        ([1.0, 2.0, -0.1], None),
        ([-3.0], None),
    ],
)
def test_transition_index(margins, expected):
    assert transition_index(np.array(margins)) == expected


def test_vectorised_matches_scalar():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(500, 12)) + np.linspace(-2, 2, 12)
    expected = [transition_index(r) for r in m]
    got = transition_indices(m)
    assert [None if g < 0 else int(g) for g in got] == expected


def test_jump_index():
    assert jump_index(np.array([-1.0, -1.2, 3.0, 3.1])) == 2
    assert jump_index(np.array([1.0])) is None


def test_transition_ci_bootstrap():
    rng = np.random.default_rng(1)
    items = np.concatenate([np.full((40, 5), -1.0), np.full((40, 5), 2.0)], axis=1) + rng.normal(0, 0.1, (40, 10))
    idx = rng.integers(0, 40, size=(300, 40))
    ci, undefined = transition_ci(items, idx)
    assert ci == (5.0, 5.0) and undefined == 0.0
    never = transition_ci(-np.abs(items), idx)
    assert never == (None, 1.0)


def test_no_transition_says_whether_the_model_is_above_chance():
    """A mean final margin <= 0 with accuracy above chance (hits win by 1, misses lose by 5: 60% right, mean margin
    0.6 - 2.0 < 0) is not "cannot do this task"; the reason says which case it is, with chance = mean 1/K."""
    from phaselens.trace import DecisionTrace

    L, N, K = 4, 40, 4
    logits = np.zeros((L, N, K))
    hits = np.arange(N) < 24  # 60% right
    logits[:, hits, 0] = 1.0  # the answer (option 0) leads by 1
    logits[:, ~hits, 1] = 5.0  # option 1 leads the answer by 5
    def reason(lg):
        tr = DecisionTrace("m", "t", "cloze", L, np.arange(L), lg, np.zeros(N, int), np.ones((N, K), bool),
                           np.full((N, K), 5), n_boot=100)
        return tr.transition(n_boot=100)
    t = reason(logits)
    assert t.layer is None and t.trace.accuracy[-1] == pytest.approx(0.6) and t.trace.margins[-1] == pytest.approx(-1.4)
    assert "above chance (0.25)" in t.reason and "cannot do this task" not in t.reason
    lose = np.zeros((L, N, K))
    lose[:, :, 1] = 5.0  # never right
    t = reason(lose)
    assert t.layer is None and "cannot do this task" in t.reason and "chance 0.25" in t.reason

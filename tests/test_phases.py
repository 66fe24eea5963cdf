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

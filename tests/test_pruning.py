"""Pruned views and block-selection criteria against independent computations.

The references here never go through phaselens' runtime: they call the Hugging Face decoder
layers directly (hand-written forward), or read HF's own ``output_hidden_states``, and compute
Block Influence, angular distance and SLEB perplexities in numpy/torch by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens.calibration import tokenize
from phaselens.encoding import encode
from phaselens.pruning import angular_distances, block_influence, selection, sleb_scores

TEXTS = [
    "The river winds through the valley, past old mills and quiet farms, before it reaches the sea.",
    "To bake bread, mix flour, water, salt and yeast, knead the dough, and let it rise for an hour.",
    "The committee met on Tuesday and agreed to postpone the vote until the budget was published.",
    "Stars form in dense clouds of gas and dust that collapse under their own gravity.",
    "She opened the letter slowly, afraid of what it might say about the house.",
]


# ----------------------------------------------------------------------------- hand-written forward
def hand_states(model: pl.Model, ids: list[int], kept: list[int]) -> list[torch.Tensor]:
    """Residual stream of one unpadded sequence, calling the HF decoder layers ``kept`` directly.

    Returns ``[h_in(kept[0]), h_out(kept[0]), h_out(kept[1]), ...]``, each ``[T, d]`` (before the final norm).
    """
    with torch.no_grad():
        return _hand_states(model, ids, kept)


def _hand_states(model: pl.Model, ids: list[int], kept: list[int]) -> list[torch.Tensor]:
    inner = model.hf.model
    x = torch.tensor([ids])
    T = x.shape[1]
    h = inner.embed_tokens(x)
    pos = torch.arange(T)[None]
    full = torch.full((T, T), float("-inf")).triu(1)
    masks = {"full_attention": full[None, None]}
    window = getattr(model.hf.config, "sliding_window", None)
    if window:
        i = torch.arange(T)
        masks["sliding_attention"] = full.masked_fill((i[:, None] - i[None, :]) >= window, float("-inf"))[None, None]
    types = getattr(model.hf.config, "layer_types", None) or ["full_attention"] * model.n_blocks
    out = [h[0]]
    for b in kept:
        kind = types[b]
        pe = inner.rotary_emb(h, pos, kind) if "gemma" in type(model.hf).__name__.lower() else inner.rotary_emb(h, pos)
        h = inner.layers[b](h, attention_mask=masks[kind], position_embeddings=pe, position_ids=pos)
        out.append(h[0])
    return out


def hand_logits(model: pl.Model, h: torch.Tensor) -> torch.Tensor:
    z = model.hf.lm_head(model.hf.model.norm(h)).float()
    cap = getattr(model.hf.config, "final_logit_softcapping", None)
    return torch.tanh(z / cap) * cap if cap else z


def _hs_with_last(model: pl.Model, ids: list[int]) -> list[torch.Tensor]:
    """HF's own hidden states ``h_{-1}..h_{L-1}`` ``[T, d]`` of one sequence. HF's last entry is after the
    final norm, so the last block's raw output is read with a forward hook instead."""
    box = {}
    hook = model.hf.model.layers[-1].register_forward_hook(lambda m, a, o: box.__setitem__("o", o))
    try:
        with torch.no_grad():
            hs = model.hf(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    finally:
        hook.remove()
    return [h[0] for h in hs[:-1]] + [box["o"][0]]


# ----------------------------------------------------------------------------- pruned views
@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_prune_nothing_reproduces_dense_logits_exactly(name, request, capitals_task):
    model = request.getfixturevalue(name)
    view = pl.prune(model, [])
    assert view.kept == list(range(model.n_blocks))
    ids = torch.tensor([tokenize(model.tokenizer, TEXTS[:1])[0]])
    with torch.no_grad():
        ref = model.hf(input_ids=ids).logits
        from phaselens.runner import patched as applied

        with applied(model.blocks, view.plan(), returns_tuple=model.returns_tuple):
            got = model.hf(input_ids=ids).logits
    assert torch.equal(got, ref)
    a = pl.decision_trace(model, capitals_task, n_boot=100)
    b = pl.decision_trace(view, capitals_task, n_boot=100)
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.blocks, b.blocks)


@pytest.mark.parametrize("name,cut", [("tiny_llama", [1, 2]), ("tiny_llama", [0, 4]), ("tiny_gemma", [1]), ("tiny_gemma", [0, 3])])
def test_pruned_trace_equals_hand_forward(name, cut, request, capitals_task):
    """Every surviving layer's option logits equal those of a forward that calls the remaining HF layers."""
    model = request.getfixturevalue(name)
    view = pl.prune(model, cut)
    kept = [b for b in range(model.n_blocks) if b not in cut]
    assert view.kept == kept and view.n_kept == len(kept)
    trace = pl.decision_trace(view, capitals_task, n_boot=100, batch_size=3)  # padded batches
    assert trace.blocks.tolist() == kept  # per-layer results name the original block
    enc = encode(capitals_task, model.tokenizer)
    with torch.no_grad():
        for i, p in enumerate(enc.prompts):
            hs = hand_states(model, p, kept)[1:]
            k = int(enc.option_mask[i].sum())
            for j, h in enumerate(hs):
                ref = hand_logits(model, h[-1])[enc.option_ids[i, :k]]
                np.testing.assert_allclose(trace.logits[j, i, :k], ref.numpy(), atol=2e-4, rtol=1e-5)


def test_pruned_view_works_everywhere(tiny_llama, smol, capitals_task):
    view = pl.prune(tiny_llama, [2, 3])
    t = pl.transition_point(view, capitals_task, n_boot=100)
    assert t.trace.blocks.tolist() == [0, 1, 4, 5]
    assert math.isfinite(pl.perplexity(view, TEXTS))
    # a model that has a transition keeps it on a surviving block of the view (original index)
    real = pl.transition_point(pl.prune(smol, [2, 3]), pl.load_task("capitals", limit=24), n_boot=100)
    assert real.layer is not None and real.layer in pl.prune(smol, [2, 3]).kept
    # pruning a pruned view removes more; the view shares the dense weights
    more = pl.prune(view, [0])
    assert more.kept == [1, 4, 5] and more.base is tiny_llama


def test_pruned_perplexity_equals_hand(tiny_llama):
    cut = [1, 4]
    kept = [b for b in range(tiny_llama.n_blocks) if b not in cut]
    nll, n = 0.0, 0
    with torch.no_grad():
        for ids in tokenize(tiny_llama.tokenizer, TEXTS, 256):
            z = hand_logits(tiny_llama, hand_states(tiny_llama, ids, kept)[-1])
            nll += torch.nn.functional.cross_entropy(z[:-1], torch.tensor(ids[1:]), reduction="sum").item()
            n += len(ids) - 1
    assert pl.perplexity(pl.prune(tiny_llama, cut), TEXTS, batch_size=2) == pytest.approx(math.exp(nll / n), rel=1e-5)


@pytest.mark.parametrize(
    "blocks,msg",
    [
        (range(6), "leaves none"),
        ([6], "out of range"),
        ([-1], "out of range"),
        ([2, 2], "repeated"),
        ([1.5], "must be ints"),
        ([True], "must be ints"),
    ],
)
def test_prune_errors(tiny_llama, blocks, msg):
    with pytest.raises(ValueError, match=msg):
        pl.prune(tiny_llama, blocks)


def test_prune_already_pruned_block_is_an_error(tiny_llama):
    with pytest.raises(ValueError, match="already pruned"):
        pl.prune(pl.prune(tiny_llama, [3]), [3])


# ----------------------------------------------------------------------------- criteria by hand
def _hand_states_all(model, texts, kept):
    return [hand_states(model, ids, kept) for ids in tokenize(model.tokenizer, texts, 256)]


def _cos(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-token cosine over the hidden dimension, in numpy float64."""
    a, b = a.double().numpy(), b.double().numpy()
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_block_influence_dense_from_hf_hidden_states(tiny_llama):
    """BI_l = 1 - mean_t cos(h_{l-1,t}, h_{l,t}) over all tokens of all texts (cosines over channels)."""
    L = tiny_llama.n_blocks
    cos = {b: [] for b in range(L)}
    for ids in tokenize(tiny_llama.tokenizer, TEXTS, 256):
        hs = _hs_with_last(tiny_llama, ids)
        for b in range(L):
            cos[b].append(_cos(hs[b], hs[b + 1]))
    ref = {b: 1 - np.concatenate(c).mean() for b, c in cos.items()}
    got = block_influence(tiny_llama, TEXTS)
    assert set(got) == set(range(L))
    for b in range(L):
        assert got[b] == pytest.approx(ref[b], abs=1e-6)
    sel = selection(tiny_llama, 2, "bi", calibration=TEXTS)
    assert sel.blocks == sorted(sorted(ref, key=ref.get)[:2])


def test_block_influence_on_pruned_and_recovered_views(tiny_llama):
    """On a pruned model the scores are those of the current model; a recovery operator after a block is
    not part of that block's influence."""
    cut = [2, 3]
    kept = [0, 1, 4, 5]
    rows = _hand_states_all(tiny_llama, TEXTS, kept)
    ref = {b: 1 - np.concatenate([_cos(r[j], r[j + 1]) for r in rows]).mean() for j, b in enumerate(kept)}
    got = block_influence(pl.prune(tiny_llama, cut), TEXTS)
    assert list(got) == kept
    for b in kept:
        assert got[b] == pytest.approx(ref[b], abs=1e-6)
    # with an operator standing in for the span, block 1's own in/out is still measured
    d = tiny_llama.d_model
    W = torch.eye(d) * 3.0 + 0.1 * torch.randn(d, d, generator=torch.Generator().manual_seed(0))
    rec = pl.ModelView(tiny_llama, tuple(cut), {(2, 4): W})
    got_rec = block_influence(rec, TEXTS)
    assert got_rec[1] == pytest.approx(ref[1], abs=1e-6)
    assert got_rec[0] == pytest.approx(ref[0], abs=1e-6)


def test_angular_distance_from_hf_hidden_states(tiny_llama):
    """d(l, n) = mean_t arccos(cos(h_{l-1,t}, h_{l+n-1,t})) / pi; "angular" cuts the smallest contiguous run."""
    L, n = tiny_llama.n_blocks, 2
    acc = {b: [] for b in range(L - n + 1)}
    for ids in tokenize(tiny_llama.tokenizer, TEXTS, 256):
        hs = _hs_with_last(tiny_llama, ids)
        for b in acc:
            acc[b].append(np.arccos(np.clip(_cos(hs[b], hs[b + n]), -1, 1)) / np.pi)
    ref = {b: np.concatenate(v).mean() for b, v in acc.items()}
    got = angular_distances(tiny_llama, n, TEXTS)
    assert set(got) == set(ref)
    for b in ref:
        assert got[b] == pytest.approx(ref[b], abs=1e-6)
    first = min(ref, key=ref.get)
    assert pl.select_blocks(tiny_llama, n, "angular", calibration=TEXTS) == [first, first + 1]


def _hand_ppl(model, texts, kept, seq_len):
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in tokenize(model.tokenizer, texts, seq_len):
            z = hand_logits(model, hand_states(model, ids, kept)[-1])
            nll += torch.nn.functional.cross_entropy(z[:-1], torch.tensor(ids[1:]), reduction="sum").item()
            count += len(ids) - 1
    return math.exp(nll / count)


def test_sleb_scores_and_greedy_selection_by_hand(tiny_llama):
    """SLEB: calibration perplexity with each block removed; greedy: the next cut is scored on the pruned model."""
    L = tiny_llama.n_blocks
    ref = {b: _hand_ppl(tiny_llama, TEXTS, [k for k in range(L) if k != b], 128) for b in range(L)}
    got = sleb_scores(tiny_llama, TEXTS, n_texts=len(TEXTS))
    for b in range(L):
        assert got[b] == pytest.approx(ref[b], rel=1e-5)
    first = min(ref, key=ref.get)
    ref2 = {b: _hand_ppl(tiny_llama, TEXTS, [k for k in range(L) if k not in (first, b)], 128)
            for b in range(L) if b != first}
    got2 = sleb_scores(pl.prune(tiny_llama, [first]), TEXTS)
    assert set(got2) == set(ref2)
    for b in ref2:
        assert got2[b] == pytest.approx(ref2[b], rel=1e-5)
    second = min(ref2, key=ref2.get)
    assert pl.select_blocks(tiny_llama, 2, "sleb", calibration=TEXTS) == sorted([first, second])


def test_sleb_extends_its_greedy_path(tiny_llama, monkeypatch):
    """A larger SLEB cut on the same model and text extends the smaller one's path (one scoring per new step) and
    chooses what a selection from scratch chooses; other text, or another start, scores from scratch."""
    import phaselens.pruning.criteria as crit

    crit._SLEB_PATHS.clear()
    fresh3 = pl.select_blocks(tiny_llama, 3, "sleb", calibration=TEXTS)
    crit._SLEB_PATHS.clear()
    calls = []
    real = crit.sleb_scores
    monkeypatch.setattr(crit, "sleb_scores", lambda v, c: calls.append(tuple(v.removed)) or real(v, c))
    two = pl.select_blocks(tiny_llama, 2, "sleb", calibration=TEXTS)
    assert len(calls) == 2 and set(two) < set(fresh3)
    assert pl.select_blocks(tiny_llama, 3, "sleb", calibration=TEXTS) == fresh3 and len(calls) == 3
    assert pl.select_blocks(tiny_llama, 1, "sleb", calibration=TEXTS) and len(calls) == 3  # a prefix of the path
    pl.select_blocks(tiny_llama, 1, "sleb", calibration=TEXTS[::-1])  # other passages: scored again
    pl.select_blocks(pl.prune(tiny_llama, [0]), 1, "sleb", calibration=TEXTS)  # another start: scored again
    assert len(calls) == 5
    sel = pl.pruning.selection(tiny_llama, 2, "sleb", calibration=TEXTS)
    sel.scores.clear()  # a caller's copy: the stored path keeps its scores
    assert pl.pruning.selection(tiny_llama, 2, "sleb", calibration=TEXTS).scores


def test_random_is_seeded(tiny_llama):
    a = pl.select_blocks(tiny_llama, 3, "random", seed=4)
    assert a == pl.select_blocks(tiny_llama, 3, "random", seed=4)
    assert a == sorted(a) and len(set(a)) == 3 and all(0 <= b < 6 for b in a)
    draws = {tuple(pl.select_blocks(tiny_llama, 3, "random", seed=s)) for s in range(20)}
    assert len(draws) > 5  # the seed matters
    view = pl.prune(tiny_llama, [0, 1])
    for s in range(10):
        got = pl.select_blocks(view, 2, "random", seed=s)
        assert set(got) <= set(view.kept)


@pytest.fixture(scope="module")
def smol_transition(smol):
    task = pl.load_task("capitals", limit=24, seed=0)
    return task, pl.transition_point(smol, task, n_boot=100)


def test_phase_targeted_selection_inside_the_phase(smol, smol_transition):
    task, tr = smol_transition
    assert tr.layer is not None, tr.reason
    t, L = tr.layer, smol.n_blocks
    n = 2
    m = min(2, L - t)  # the decisive phase of this small model on this task can be short
    silent = pl.select_blocks(smol, n, "silent", transition=tr)
    decisive = pl.select_blocks(smol, m, "decisive", transition=tr)
    assert silent == [t - 2, t - 1]  # adjacent to the transition, inside [0, t)
    assert decisive == list(range(t, t + m))  # adjacent, inside [t, L)
    assert pl.select_blocks(smol, n, "silent", transition=tr, placement="far") == [0, 1]
    assert pl.select_blocks(smol, m, "decisive", transition=tr, placement="far") == list(range(L - m, L))
    c = pl.select_blocks(smol, n, "silent", transition=tr, placement="center")
    assert c == [(t - n) // 2, (t - n) // 2 + 1]
    assert pl.select_blocks(smol, n, "silent", transition=tr, placement=3) == [3, 4]
    # the transition is computed from task= when not given, on the model as given
    assert pl.select_blocks(smol, n, "silent", task=task) == silent


def test_phase_targeted_selection_errors(smol, smol_transition):
    _task, tr = smol_transition
    with pytest.raises(ValueError, match="needs task="):
        pl.select_blocks(smol, 2, "silent")
    with pytest.raises(ValueError, match="fewer than n"):
        pl.select_blocks(smol, smol.n_blocks - tr.layer + 1, "decisive", transition=tr)
    with pytest.raises(ValueError, match="placement"):
        pl.select_blocks(smol, 2, "silent", transition=tr, placement="middle")
    with pytest.raises(ValueError, match="do not fit"):
        pl.select_blocks(smol, 2, "silent", transition=tr, placement=tr.layer - 1)


def test_phase_selection_refuses_a_model_without_transition(tiny_llama):
    """A trace whose final margin is negative has no transition (built by hand: the answer is always behind)."""
    L, n = tiny_llama.n_blocks, 5
    z = np.zeros((L, n, 2))
    z[:, :, 1] = 1.0  # option 1 always ahead of the answer (option 0)
    tr = pl.DecisionTrace(model="m", task="t", format="cloze", n_blocks=L, blocks=np.arange(L), logits=z,
                          answers=np.zeros(n, int), mask=np.ones((n, 2), bool), option_chars=np.ones((n, 2), int)).transition()
    assert tr.layer is None
    with pytest.raises(ValueError, match="no decisive phase|cannot do"):
        pl.select_blocks(tiny_llama, 1, "decisive", transition=tr)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"n": 2, "criterion": "magic"}, "unknown criterion"),
        ({"n": 0, "criterion": "bi"}, "n must be"),
        ({"n": 6, "criterion": "bi"}, "n must be"),
        ({"n": 2.0, "criterion": "random"}, "n must be"),
        ({"n": True, "criterion": "random"}, "n must be"),
    ],
)
def test_select_blocks_bad_arguments(tiny_llama, kw, msg):
    with pytest.raises(ValueError, match=msg):
        pl.select_blocks(tiny_llama, kw["n"], kw["criterion"])


def test_angular_distance_bad_n(tiny_llama):
    with pytest.raises(ValueError, match="n must be"):
        angular_distances(tiny_llama, 6, TEXTS)


def test_sleb_on_a_recovered_view_scores_plain_pruned_candidates(tiny_llama):
    """SLEB's candidates are the pruned model minus one more block; a recovered view's operators are dropped
    consistently (the replayed prefix is that of the candidates, not of the recovered model)."""
    d = tiny_llama.d_model
    W = torch.eye(d) * 2.0
    rec = pl.ModelView(tiny_llama, (1,), {(1, 2): W})
    got = sleb_scores(rec, TEXTS)
    ref = {b: _hand_ppl(tiny_llama, TEXTS, [k for k in range(6) if k not in (1, b)], 128) for b in rec.kept}
    for b in rec.kept:
        assert got[b] == pytest.approx(ref[b], rel=1e-5)

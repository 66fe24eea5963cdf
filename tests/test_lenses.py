"""Lenses beside the logit lens (issue 11), against independent references: numpy least squares on activations
taken with plain forward hooks, the model's own Hugging Face logits, and the logit lens's held-out KL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens.calibration import load_calibration, tokenize
from phaselens.encoding import encode
from phaselens.lenses import Lens, lens_kl
from phaselens.lenses import tuned as tuned_mod

TUNED = dict(steps=30, lr=3e-3, batch_tokens=128, max_train_tokens=1200, vocab=512, progress=False)


@pytest.fixture(scope="module")
def cal() -> list[str]:
    return load_calibration()[:12]


@pytest.fixture(scope="module")
def held() -> list[str]:
    return pl.heldout_texts()[:4]


@pytest.fixture(scope="module")
def tuned_llama(tiny_llama, cal):
    return pl.fit_lens(tiny_llama, "tuned", cal, seed=0, **TUNED)


@pytest.fixture(scope="module")
def linear_llama(tiny_llama, cal):
    return pl.fit_lens(tiny_llama, "linear", cal)


def _block_outputs(model: pl.Model, texts: list[str], seq_len: int = 256) -> dict[int, np.ndarray]:
    """{b: [N, d]} every block's output, one unpadded text at a time, with plain forward hooks (no phaselens code)."""
    got: dict[int, list] = {b: [] for b in range(model.n_blocks)}
    hooks = [model.hf.model.layers[b].register_forward_hook(
        lambda m, a, o, _b=b: got[_b].append((o[0] if isinstance(o, tuple) else o)[0].double().numpy()))
        for b in range(model.n_blocks)]
    try:
        with torch.no_grad():
            for ids in tokenize(model.tokenizer, texts, seq_len):
                model.hf.model(input_ids=torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return {b: np.concatenate(v) for b, v in got.items()}


def test_linear_lens_equals_numpy_lstsq(tiny_llama, linear_llama, cal):
    acts = _block_outputs(tiny_llama, cal)
    L = tiny_llama.n_blocks
    Y = acts[L - 1]
    assert linear_llama.info["n_tokens"] == Y.shape[0]
    assert linear_llama.blocks == list(range(L - 1))
    for b in range(L - 1):
        X1 = np.concatenate([acts[b], np.ones((len(Y), 1))], 1)
        ref = np.linalg.lstsq(X1, Y, rcond=None)[0]
        W, v = linear_llama.translator(b)
        got = np.concatenate([W.double().numpy(), v.double().numpy()[None]])
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5, b


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_every_lens_last_row_is_the_models_own_logits(name, request, cal, capitals_task):
    model = request.getfixturevalue(name)
    enc = encode(capitals_task, model.tokenizer)
    ref = np.full((len(capitals_task), enc.n_options), -np.inf, dtype=np.float32)
    with torch.no_grad():
        for i, p in enumerate(enc.prompts):
            out = model.hf(input_ids=torch.tensor([p])).logits[0, -1]  # the HF head (soft-capped for Gemma)
            k = int(enc.option_mask[i].sum())
            ref[i, :k] = out[enc.option_ids[i, :k]].numpy()
    lenses = [pl.fit_lens(model, "logit"), pl.fit_lens(model, "linear", cal),
              pl.fit_lens(model, "tuned", cal, **{**TUNED, "steps": 3})]
    for lens in lenses:
        tr = pl.decision_trace(model, capitals_task, lens=lens)
        assert tr.lens == lens.kind
        np.testing.assert_allclose(tr.logits[-1], ref, rtol=1e-4, atol=1e-4)
    # and the translators do change the other rows
    assert not np.allclose(pl.decision_trace(model, capitals_task, lens=lenses[1]).logits[0],
                           pl.decision_trace(model, capitals_task).logits[0])


def test_tuned_lens_beats_the_logit_lens_on_heldout_kl(tiny_llama, tuned_llama, held):
    logit = lens_kl(tiny_llama, held, "logit", seq_len=48)
    tuned = lens_kl(tiny_llama, held, tuned_llama, seq_len=48)
    assert logit.shape == tuned.shape == (tiny_llama.n_blocks,)
    assert tuned[-1] == logit[-1] == 0
    assert (tuned[:-1] < logit[:-1]).all(), (tuned, logit)
    assert tuned_llama.info["vocab"] == 512 and 0 < tuned_llama.info["vocab_mass"] <= 1


def test_lens_kl_is_the_kl_by_hand(tiny_llama, linear_llama, held):
    text = held[:1]
    acts = _block_outputs(tiny_llama, text, 24)
    L = tiny_llama.n_blocks
    with torch.no_grad():
        logp = torch.log_softmax(tiny_llama.hf.lm_head(tiny_llama.hf.model.norm(torch.tensor(acts[L - 1]).float())), -1)
        b = 1
        W, v = linear_llama.translator(b)
        h = torch.tensor(acts[b]).float() @ W + v
        logq = torch.log_softmax(tiny_llama.hf.lm_head(tiny_llama.hf.model.norm(h)), -1)
        ref = float((logp.exp() * (logp - logq)).sum(-1).mean())
    got = lens_kl(tiny_llama, text, linear_llama, seq_len=24)
    assert got[b] == pytest.approx(ref, rel=1e-4)


def test_save_load_identical_and_other_model_refused(tiny_llama, tiny_gemma, tuned_llama, capitals_task, tmp_path):
    path = tuned_llama.save(tmp_path / "tuned.safetensors")
    back = pl.load_lens(path, tiny_llama)
    assert back.kind == "tuned" and back.info == tuned_llama.info
    a = pl.decision_trace(tiny_llama, capitals_task, lens=tuned_llama).logits
    b = pl.decision_trace(tiny_llama, capitals_task, lens=back).logits
    assert np.array_equal(a, b)
    assert np.array_equal(pl.decision_trace(tiny_llama, capitals_task, lens=str(path)).logits, a)  # a path works too
    with pytest.raises(pl.errors.LensError, match="fitted on"):
        pl.load_lens(path, tiny_gemma)
    with pytest.raises(pl.errors.LensError, match="fingerprint"):
        pl.decision_trace(tiny_gemma, capitals_task, lens=tuned_llama)
    (tmp_path / "junk.safetensors").write_text("not a lens")
    with pytest.raises(pl.errors.LensError, match="not a lens file"):
        pl.load_lens(tmp_path / "junk.safetensors", tiny_llama)


def test_same_seed_same_translators(tiny_llama, tuned_llama, cal):
    again = pl.fit_lens(tiny_llama, "tuned", cal, seed=0, **TUNED)
    other = pl.fit_lens(tiny_llama, "tuned", cal, seed=1, **TUNED)
    for b in tuned_llama.blocks:
        assert torch.equal(again.weights[b], tuned_llama.weights[b]) and torch.equal(again.biases[b], tuned_llama.biases[b])
    assert not torch.equal(other.weights[0], tuned_llama.weights[0])
    assert not torch.equal(tuned_llama.weights[0], torch.eye(tiny_llama.d_model))  # it moved from the identity


def test_interrupted_training_resumes_to_the_same_translators(tiny_llama, cal, tmp_path, monkeypatch):
    kw = {**TUNED, "steps": 12, "checkpoint_every": 4}
    whole = pl.fit_lens(tiny_llama, "tuned", cal, seed=3, **kw)
    real, calls = tuned_mod._step_loss, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tuned_mod, "_step_loss", flaky)
    with pytest.warns(RuntimeWarning, match="interrupted at step 6"), pytest.raises(KeyboardInterrupt):
        pl.fit_lens(tiny_llama, "tuned", cal, seed=3, out=tmp_path, **kw)
    monkeypatch.setattr(tuned_mod, "_step_loss", real)
    resumed = pl.fit_lens(tiny_llama, "tuned", cal, seed=3, out=tmp_path, **kw)
    for b in whole.blocks:
        assert torch.equal(whole.weights[b], resumed.weights[b]) and torch.equal(whole.biases[b], resumed.biases[b])


@pytest.mark.parametrize("extra", [{}, {"vocab": "full"}, {"checkpoint_every": 1}])
def test_tuned_training_emits_no_warning(tiny_llama, tiny_gemma, cal, tmp_path, extra):
    """Training (with its progress bar, a checkpointed run and its resumption) warns about nothing: torch's
    "converting a tensor with requires_grad=True to a scalar" warning came from reading the loss for the bar."""
    import warnings

    kw = {**TUNED, "steps": 3, "progress": True, **extra}
    for i, model in enumerate((tiny_llama, tiny_gemma)):
        if "checkpoint_every" in extra:
            kw["out"] = tmp_path / str(i)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pl.fit_lens(model, "tuned", cal, seed=0, **kw)
            if "out" in kw:  # again: resumes from the checkpoint just written
                pl.fit_lens(model, "tuned", cal, seed=0, **kw)


def test_lens_on_the_other_readouts_is_recorded(tiny_llama, linear_llama, capitals_task):
    tr = pl.transition_point(tiny_llama, capitals_task, lens=linear_llama, n_boot=100)
    assert tr.trace.lens == "linear" and "linear lens" in tr.summary()
    sw = pl.iterative_prune(tiny_llama, capitals_task, steps=1, lens=linear_llama, n_boot=100,
                            calibration=load_calibration()[:3])
    assert sw.lens == "linear" and all(s.transition.trace.lens == "linear" for s in sw.steps)
    nz = pl.inject_noise(tiny_llama, capitals_task, blocks=[1], eps=0.5, seeds=1, lens=linear_llama, n_boot=100)
    assert nz.lens == "linear"
    ab = pl.ablate(tiny_llama, capitals_task, blocks=[1, 2], pairs=False, lens=linear_llama, n_boot=100)
    assert ab.lens == "linear"


def test_a_noise_study_job_with_stride_reads_its_phases_through_its_lens(tiny_llama, linear_llama, capitals_task,
                                                                         tmp_path):
    """The study's noise kind finds the transition itself when given ``stride``: through the job's lens, as
    ``inject_noise`` does (it used the logit lens whatever the job's lens was)."""
    from phaselens.study.runs import RUNS

    r = RUNS["noise"].run(tiny_llama, capitals_task, 0, {"stride": 2, "eps": [0.5], "seeds": 1, "n_boot": 100,
                                                         "lens": linear_llama}, tmp_path)
    want = pl.transition_point(tiny_llama, capitals_task, lens=linear_llama, n_boot=100)
    assert r.lens == "linear" and r.transition == want.layer
    assert set(r.blocks) == set(range(0, tiny_llama.n_blocks, 2)) | {tiny_llama.n_blocks - 1} | (
        {want.layer} if want.layer is not None else set())


def test_bad_lens_input(tiny_llama, tiny_gemma, capitals_task, cal):
    with pytest.raises(pl.errors.LensError, match="unknown lens kind 'bogus'"):
        pl.fit_lens(tiny_llama, "bogus")
    with pytest.raises(pl.errors.LensError, match="unknown lens kind"):
        pl.decision_trace(tiny_llama, capitals_task, lens="bogus")
    with pytest.raises(pl.errors.LensError, match="unknown lens kind"):
        pl.inject_noise(tiny_llama, capitals_task, lens="tunned")
    d, L = tiny_llama.d_model, tiny_llama.n_blocks
    W = {b: torch.eye(d) for b in range(L - 1)}
    B = {b: torch.zeros(d) for b in range(L - 1)}
    bad = dict(W)
    bad[2] = torch.full((d, d), float("nan"))
    with pytest.raises(pl.errors.LensError, match="block 2 holds NaN"):
        Lens("tuned", tiny_llama.name, tiny_llama.fingerprint, L, d, bad, B)
    huge = dict(W)
    huge[3] = torch.full((d, d), 3e38)
    lens = Lens("tuned", tiny_llama.name, tiny_llama.fingerprint, L, d, huge, B)
    with pytest.raises(pl.errors.LensError, match="block 3 produced NaN or Inf"):
        pl.decision_trace(tiny_llama, capitals_task, lens=lens)
    with pytest.raises(pl.errors.LensError, match=f"needs at least {d + 1} calibration tokens"):
        pl.fit_lens(tiny_llama, "linear", ["Only a few words here."])
    with pytest.raises(pl.errors.LensError, match="does not take"):
        pl.fit_lens(tiny_llama, "linear", cal, steps=3)
    with pytest.raises(pl.errors.LensError, match="vocab"):
        pl.fit_lens(tiny_llama, "tuned", cal, vocab=-1, progress=False)


def test_cli_lens_fit_kl_and_transition(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from phaselens.cli import app

    runner = CliRunner()
    path = tmp_path / "lin.safetensors"
    res = runner.invoke(app, ["lens", "fit", "-m", tiny_llama_dir, "-k", "linear", "--lens-file", str(path)])
    assert res.exit_code == 0, res.output
    assert path.is_file()
    res = runner.invoke(app, ["transition", "-m", tiny_llama_dir, "-t", "capitals", "--limit", "6", "--lens", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert '"lens": "linear"' in res.output
    res = runner.invoke(app, ["lens", "kl", "-m", tiny_llama_dir, "--lens", "logit", "--lens", str(path), "--seq-len", "16"])
    assert res.exit_code == 0, res.output
    assert "lin.safetensors" in res.output
    res = runner.invoke(app, ["transition", "-m", tiny_llama_dir, "-t", "capitals", "--lens", "bogus"])
    assert res.exit_code == 2 and "unknown lens kind" in res.output

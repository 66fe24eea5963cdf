"""Lens kinds are a registry (issue 19): a non-affine kind registered outside phaselens (tests/plugins/mlp_lens.py,
``mlp2``) fits, traces and saves/loads like the built-ins, against plain Hugging Face hidden states with the MLP,
the final norm and the unembedding applied by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import phaselens as pl
from phaselens.calibration import load_calibration
from phaselens.encoding import encode
from phaselens.lenses import LENS_KINDS, check_lens_arg
from phaselens.registry import PLUGINS_ENV, load_plugins, registered

PLUGIN = Path(__file__).parent / "plugins" / "mlp_lens.py"
BLOCKS = (0, 7, 15, 28)  # SmolLM2 has 30 blocks; 29 is the model's own output


@pytest.fixture(scope="module")
def mlp_kind():
    """The plugin, loaded the way other processes load it (a .py path), the environment restored afterwards."""
    env = os.environ.get(PLUGINS_ENV)
    load_plugins(str(PLUGIN))
    if env is None:
        os.environ.pop(PLUGINS_ENV, None)
    else:
        os.environ[PLUGINS_ENV] = env
    return LENS_KINDS.get("mlp2")


@pytest.fixture(scope="module")
def mlp_smol(smol, mlp_kind):
    return pl.fit_lens(smol, "mlp2", load_calibration()[:4], seed=0, hidden=8, steps=3, lr=1e-2, seq_len=48)


def _by_hand(model: pl.Model, task: pl.Task, blocks, translate) -> dict[int, np.ndarray]:
    """{block: [N, K]} option logits from HF's own hidden states (one unpadded prompt at a time): ``translate(b, h)``,
    then the model's final norm and its unembedding rows of the options (no phaselens readout code)."""
    enc = encode(task, model.tokenizer)
    out = {b: np.full((enc.n_items, enc.n_options), -np.inf, dtype=np.float64) for b in blocks}
    with torch.no_grad():
        for i, p in enumerate(enc.prompts):
            hs = model.hf(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states
            k = int(enc.option_mask[i].sum())
            W = model.hf.lm_head.weight[enc.option_ids[i, :k]].double()
            for b in blocks:  # hs[b + 1] is block b's output
                x = model.hf.model.norm(translate(b, hs[b + 1][0, -1].float()))
                out[b][i, :k] = (W @ x.double()).numpy()
    return out


def test_mlp_lens_is_registered_as_a_user_kind(mlp_kind, mlp_smol, smol):
    df = registered("lens")
    row = df[df.name == "mlp2"].iloc[0]
    assert not row.builtin and list(df.name[:3]) == ["logit", "linear", "tuned"]
    assert mlp_smol.kind == "mlp2" and mlp_smol.lens_kind is mlp_kind
    assert mlp_smol.blocks == list(range(smol.n_blocks - 1))
    assert set(mlp_smol.params[0]) == {"W1", "b1", "W2", "b2"} and mlp_smol.params[0]["W1"].shape == (smol.d_model, 8)
    assert mlp_smol.weights == {} and not mlp_smol.is_identity
    with pytest.raises(pl.errors.LensError, match="not affine"):
        mlp_smol.translator(0)
    check_lens_arg("mlp2")  # a lens= of the registered kind is accepted before any model loads


def test_mlp_lens_trace_equals_hidden_states_by_hand(smol, mlp_smol, capitals_task):
    tr = pl.decision_trace(smol, capitals_task, lens=mlp_smol, n_boot=100)
    assert tr.lens == "mlp2"

    def mlp(b, h):  # the translator written out again, from the fitted tensors
        p = mlp_smol.params[b]
        return h + F.gelu(h @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]

    ref = _by_hand(smol, capitals_task, BLOCKS, mlp)
    logit = _by_hand(smol, capitals_task, BLOCKS, lambda b, h: h)
    for b in BLOCKS:
        np.testing.assert_allclose(tr.logits[b], ref[b], rtol=1e-4, atol=2e-3)
        fin = np.isfinite(ref[b])
        assert np.abs(ref[b][fin] - logit[b][fin]).max() > 1e-2, b  # the MLP does move the readout
    own = pl.decision_trace(smol, capitals_task, n_boot=100).logits[-1]
    np.testing.assert_array_equal(tr.logits[-1], own)  # the last row reads through the identity


def test_mlp_lens_save_load_and_trace_again(smol, mlp_smol, capitals_task, tmp_path):
    path = mlp_smol.save(tmp_path / "mlp.safetensors")
    back = pl.load_lens(path, smol)
    assert back.kind == "mlp2" and back.info == mlp_smol.info and back.digest == mlp_smol.digest
    for b in mlp_smol.blocks:
        for name, t in mlp_smol.params[b].items():
            assert torch.equal(back.params[b][name], t)
    a = pl.decision_trace(smol, capitals_task, lens=mlp_smol, n_boot=100).logits
    assert np.array_equal(pl.decision_trace(smol, capitals_task, lens=back, n_boot=100).logits, a)
    assert np.array_equal(pl.decision_trace(smol, capitals_task, lens=str(path), n_boot=100).logits, a)


def test_unregistered_kind_in_a_file_names_it_and_how_to_load_it(tiny_llama, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    lens = pl.fit_lens(tiny_llama, "logit")
    path = lens.save(tmp_path / "x.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta["kind"] = "nosuchkind"
    save_file({"W.0": torch.eye(tiny_llama.d_model)}, str(tmp_path / "y.safetensors"), metadata=meta)
    with pytest.raises(pl.errors.LensError, match=r"kind 'nosuchkind', which is not registered.*register_lens.*PHASELENS_PLUGINS"):
        pl.load_lens(tmp_path / "y.safetensors", tiny_llama)


def test_mlp_lens_file_with_wrong_shapes_is_refused(tiny_llama, mlp_kind, tmp_path):
    lens = pl.fit_lens(tiny_llama, "mlp2", load_calibration()[:2], hidden=4, steps=1, seq_len=16)
    path = lens.save(tmp_path / "m.safetensors")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta["info"] = json.dumps({**json.loads(meta["info"]), "hidden": 5})
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(pl.errors.LensError, match="bad.safetensors.*expected"):
        pl.load_lens(tmp_path / "bad.safetensors", tiny_llama)


def test_linear_lens_trace_equals_hidden_states_by_hand(tiny_llama, capitals_task):
    lens = pl.fit_lens(tiny_llama, "linear", load_calibration()[:12])
    tr = pl.decision_trace(tiny_llama, capitals_task, lens=lens, n_boot=100)
    blocks = range(tiny_llama.n_blocks - 1)
    ref = _by_hand(tiny_llama, capitals_task, blocks, lambda b, h: h @ lens.weights[b] + lens.biases[b])
    for b in blocks:
        np.testing.assert_allclose(tr.logits[b], ref[b], rtol=1e-4, atol=1e-3)


def test_lens_metadata_is_checked_against_the_model(tiny_llama, tiny_gemma):
    L, d = tiny_llama.n_blocks, tiny_llama.d_model
    lens = pl.Lens("logit", tiny_llama.name, tiny_llama.fingerprint, L + 1, d)
    with pytest.raises(pl.errors.LensError, match=f"{L + 1} blocks of width {d}.*{L} blocks of width {d}"):
        lens.check_model(tiny_llama)
    with pytest.raises(pl.errors.LensError, match="n_blocks must be an int"):
        pl.Lens("logit", tiny_llama.name, tiny_llama.fingerprint, 0, d)
    with pytest.raises(pl.errors.LensError, match="unknown lens kind 'bogus'.*register_lens"):
        pl.Lens("bogus", tiny_llama.name, tiny_llama.fingerprint, L, d)


def test_a_kind_must_return_a_lens_of_its_kind(tiny_llama):
    @pl.register_lens("broken-kind")
    class Broken(pl.LensKind):
        def fit(self, model, calibration=None, *, seed=0, **opts):
            return pl.fit_lens(model, "logit")

    try:
        with pytest.raises(pl.errors.LensError, match="'broken-kind'.*fit\\(\\) returned"):
            pl.fit_lens(tiny_llama, "broken-kind")
    finally:
        LENS_KINDS.remove("broken-kind")
    assert "broken-kind" not in LENS_KINDS


def test_kinds_is_a_deprecated_view_of_the_registry():
    with pytest.warns(FutureWarning, match="KINDS` is deprecated"):
        from phaselens.lenses import KINDS
    assert KINDS[:3] == ("logit", "linear", "tuned") and KINDS == LENS_KINDS.names()
    with pytest.warns(FutureWarning):
        from phaselens.lenses.base import KINDS as K2
    assert K2 == KINDS


def test_cli_fits_a_registered_kind(tiny_llama_dir, mlp_kind, tmp_path):
    from typer.testing import CliRunner

    from phaselens.cli import app

    path = tmp_path / "mlp.safetensors"
    res = CliRunner().invoke(app, ["lens", "fit", "-m", tiny_llama_dir, "-k", "mlp2", "-o", str(path)])
    assert res.exit_code == 0, res.output
    assert path.is_file()
    res = CliRunner().invoke(app, ["lens", "fit", "-m", tiny_llama_dir, "-k", "mlp3", "-o", str(path)])
    assert res.exit_code != 0 and "mlp2" in res.output

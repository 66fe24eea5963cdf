"""pl.heal against independent computations: plain transformers + peft on the saved adapter, a hand-written AdamW
step, an uninterrupted run for the resumed one, and the parameter count of a Qwen2-1.5B config by hand.

Tiny random Llama / Qwen2 models (conftest.tiny_model); one slow test on SmolLM2.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import phaselens as pl
import phaselens.healing as H
from conftest import tiny_model
from phaselens.export import ExportedView
from phaselens.runner import Batch, Runner, pad
from phaselens.view import ModelView

TEXTS = ["The cat sat on the mat and looked at the door.", "Paris is the capital of France.",
         "Two plus two is four, and three plus three is six.", "The river runs to the sea in spring.",
         "She opened the window to let the cool air in.", "Every morning the baker lights the oven."]


@pytest.fixture(scope="module")
def tiny_qwen2(smol) -> pl.Model:
    from transformers import Qwen2Config

    cfg = Qwen2Config(vocab_size=smol.tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return tiny_model(cfg, smol.tokenizer)


def encode(tok, texts=TEXTS):
    return pad([tok(t)["input_ids"] for t in texts], tok.pad_token_id, "cpu")


def runner_logits(view, ids, mask) -> torch.Tensor:
    """The healed model's logits through phaselens' runner (its operators applied, if any)."""
    return Runner(view).logits(Batch(list(range(len(ids))), ids, mask)).float()


def hf_logits(hf, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask).logits.float()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> float:
    """Largest difference relative to the logits' scale (max(1, max |b|)); asserted <= tol."""
    err = float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
    assert err <= tol, err
    return err


def text_loss(hf, tok, texts=TEXTS) -> float:
    """Mean next-token cross-entropy over every token after the first of each text, one text at a time (no padding)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(t)["input_ids"]])
            lp = torch.log_softmax(hf(input_ids=ids).logits[0, :-1].double(), -1)
            total += float(-lp.gather(-1, ids[0, 1:, None]).sum())
            n += ids.shape[1] - 1
    return total / n


# ----------------------------------------------------------------------------- LoRA against peft
@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
def test_lora_heal_lowers_loss_and_equals_peft(name, request, tmp_path):
    from peft import PeftModel

    model = request.getfixturevalue(name)
    view = pl.prune(model, [2, 3])
    healed = pl.heal(view, TEXTS, method="lora", steps=8, lr=1e-2, batch_size=3, out=tmp_path / "run", progress=False)
    assert isinstance(healed, pl.Model) and healed.n_blocks == 4
    assert len(healed.healing.losses) == 8
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "start", dtype=torch.float32).eval()
    before = text_loss(ref, model.tokenizer)
    peft_ref = PeftModel.from_pretrained(ref, tmp_path / "run" / "adapter").eval()
    after = text_loss(peft_ref, model.tokenizer)
    assert after < before - 0.5, (before, after)  # healing on these texts lowers their loss (independently measured)
    ids, mask = encode(model.tokenizer)
    mine = runner_logits(healed, ids, mask)
    m = mask.bool()
    close(mine[m], hf_logits(peft_ref, ids, mask)[m])  # unmerged adapter, peft's own forward
    merged = peft_ref.merge_and_unload()
    close(mine[m], hf_logits(merged, ids, mask)[m])
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model", dtype=torch.float32)
    close(mine[m], hf_logits(reloaded, ids, mask)[m])
    # the dense model it was cut from is untouched: its pruned view still computes what the start export does
    close(runner_logits(view, ids, mask)[m], hf_logits(AutoModelForCausalLM.from_pretrained(
        tmp_path / "run" / "start", dtype=torch.float32), ids, mask)[m])
    # and the healed model traces like any other
    tr = pl.decision_trace(healed, pl.load_task("capitals", limit=4), n_boot=100)
    assert tr.margins.shape[0] == 4


def test_ghosted_heal_keeps_operators_frozen(tiny_llama, tmp_path):
    """Whole-stream operators (cuts at block 0 and in the middle) stay frozen and applied: the healed model equals
    the start export run by its generated modeling file (plain transformers) with peft's adapter on top."""
    from peft import PeftModel

    base = ModelView(tiny_llama, (0, 3))
    g = torch.Generator().manual_seed(1)
    ops = {s: torch.eye(64) + 0.05 * torch.randn(64, 64, generator=g) for s in base.spans}
    view = ModelView(tiny_llama, (0, 3), ops, method="ghosted")
    healed = pl.heal(view, TEXTS, method="lora", steps=4, lr=5e-3, batch_size=3, out=tmp_path / "run", progress=False)
    assert isinstance(healed, ExportedView)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "start", dtype=torch.float32, trust_remote_code=True)
    peft_ref = PeftModel.from_pretrained(ref.eval(), tmp_path / "run" / "adapter").eval()
    ids, mask = encode(tiny_llama.tokenizer)
    m = mask.bool()
    mine = runner_logits(healed, ids, mask)
    close(mine[m], hf_logits(peft_ref, ids, mask)[m])
    code = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model", dtype=torch.float32, trust_remote_code=True)
    close(mine[m], hf_logits(code, ids, mask)[m])
    again = pl.load_model(str(tmp_path / "run" / "model"))
    close(runner_logits(again, ids, mask)[m], mine[m])
    # the operators were not trained
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "run" / "model" / "phaselens_operators.safetensors")
    assert set(stored) == {"stream.2"}  # (kept blocks 1, 2 before the cut at 3) stream.0 lives in the stored (folded) input embedding
    assert torch.equal(stored["stream.2"], ops[(3, 4)].float())


# ----------------------------------------------------------------------------- full fine-tuning against AdamW by hand
def test_full_one_step_equals_hand_written_adamw(tiny_llama, tmp_path):
    lr, wd, b1, b2, eps = 1e-3, 0.01, 0.9, 0.999, 1e-8
    view = pl.prune(tiny_llama, [1, 4])
    healed = pl.heal(view, TEXTS, method="full", steps=1, lr=lr, weight_decay=wd, batch_size=len(TEXTS),
                     out=tmp_path / "run", progress=False)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "start", dtype=torch.float32).eval()
    tok = tiny_llama.tokenizer
    # the loss by hand: every text alone (no padding), summed token NLL over all targets
    total, n = 0.0, 0
    for t in TEXTS:
        ids = torch.tensor([tok(t)["input_ids"]])
        lp = torch.log_softmax(ref(input_ids=ids).logits[0, :-1], -1)
        total = total - lp.gather(-1, ids[0, 1:, None]).sum()
        n += ids.shape[1] - 1
    (total / n).backward()
    assert healed.healing.losses[0] == pytest.approx(float(total.detach() / n), rel=1e-5)
    state = torch.load(tmp_path / "run" / ".phaselens" / "heal" / "checkpoint.pt", weights_only=True)
    names = list(state["params"])
    mine = dict(healed.hf.named_parameters())
    checked, total_n = 0, 0
    for i, (name, p) in enumerate(ref.named_parameters()):
        g = p.grad
        m1 = (1 - b1) * g  # Adam's first moment after one step is (1 - b1) g: the gradient itself, checked
        assert torch.allclose(state["optimizer"]["state"][names.index(name)]["exp_avg"], m1, rtol=1e-4, atol=1e-7), name
        v1 = (1 - b2) * g * g
        m_hat, v_hat = m1 / (1 - b1), v1 / (1 - b2)
        want = p.detach() * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
        # where |g| is near eps the step m / (sqrt(v) + eps) turns on the gradient's last bits (the batched and the
        # per-text gradients round differently): there only Adam's bound |step| <= lr is checked; elsewhere the step
        sure = (g.abs() > 100 * eps) | (g == 0)  # (a zero gradient: weight decay alone, exactly)
        checked, total_n = checked + int(sure.sum()), total_n + sure.numel()
        assert torch.allclose(mine[name][sure], want[sure], rtol=0, atol=1e-6), name
        step = mine[name] - p.detach() * (1 - lr * wd)
        assert bool((step.abs() <= lr * (1 + 1e-4) + 1e-7).all()), name
    assert checked > 0.9 * total_n  # nearly all weights are checked to 1e-6 (here 95%)


# ----------------------------------------------------------------------------- resuming
@pytest.mark.parametrize("method", ["lora", "full"])
def test_killed_run_resumes_to_the_same_weights(method, tiny_llama, tmp_path, monkeypatch):
    view = pl.prune(tiny_llama, [2])
    kw = dict(method=method, steps=6, lr=5e-3 if method == "lora" else 1e-4, batch_size=2, checkpoint_every=2,
              progress=False)
    whole = pl.heal(view, TEXTS, out=tmp_path / "a", **kw)

    saved = H._checkpoint

    def killed(path, params, opt, step, losses):
        saved(path, params, opt, step, losses)
        if step == 4:
            raise KeyboardInterrupt  # the process dies right after its step-4 checkpoint

    monkeypatch.setattr(H, "_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        pl.heal(view, TEXTS, out=tmp_path / "b", **kw)
    assert not (tmp_path / "b" / "model").exists()
    monkeypatch.setattr(H, "_checkpoint", saved)
    resumed = pl.heal(view, TEXTS, out=tmp_path / "b", **kw)
    assert resumed.healing.resumed_from == 4
    assert resumed.healing.losses == whole.healing.losses
    a, b = whole.hf.state_dict(), resumed.hf.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a finished run folder gives its model back without training again
    again = pl.heal(view, TEXTS, out=tmp_path / "b", **kw)
    for k, v in again.hf.state_dict().items():
        assert torch.equal(v, a[k]), k
    assert json.loads((tmp_path / "b" / "heal.json").read_text())["losses"] == whole.healing.losses
    # the record of the run is a result: its table, its figure, saved and read back
    assert whole.healing.to_pandas().loss.tolist() == whole.healing.losses
    assert list(whole.healing.plot().data[0].y) == whole.healing.losses
    assert pl.load_result(whole.healing.save(tmp_path / "results")).losses == whole.healing.losses


KILLED_CHILD = """
import os, signal, sys
import phaselens as pl
import phaselens.healing as H
saved = H._checkpoint
def killed(path, params, opt, step, losses):
    saved(path, params, opt, step, losses)
    if step == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup: the lock and any temporary stay behind
H._checkpoint = killed
pl.heal(pl.prune(pl.load_model(sys.argv[1], device="cpu"), [2]), sys.argv[3:], method="full", steps=6, lr=1e-4,
        batch_size=2, checkpoint_every=2, out=sys.argv[2], progress=False)
"""


def test_sigkilled_process_resumes_to_the_same_weights(tiny_llama_dir, tmp_path):
    """A process killed with SIGKILL right after its step-4 checkpoint: the next call takes over its lock, resumes
    at step 4 and ends with the weights of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import warnings

    # the child computes with the parent's thread count (another test module may have set it): bit-equal sums
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-c", KILLED_CHILD, tiny_llama_dir, str(tmp_path / "b"), *TEXTS], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (tmp_path / "b" / ".phaselens" / "heal" / "lock").exists()  # left behind by the killed process
    view = pl.prune(pl.load_model(tiny_llama_dir, device="cpu"), [2])
    kw = dict(method="full", steps=6, lr=1e-4, batch_size=2, checkpoint_every=2, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = pl.heal(view, TEXTS, out=tmp_path / "b", **kw)
    assert any("taking over the lock" in str(w.message) for w in caught)
    assert resumed.healing.resumed_from == 4
    whole = pl.heal(view, TEXTS, out=tmp_path / "a", **kw)
    assert resumed.healing.losses == whole.healing.losses
    a, b = whole.hf.state_dict(), resumed.hf.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_task_data_trains_on_the_answer_tokens(tiny_llama, capitals_task, tmp_path, capsys):
    task = pl.load_task(capitals_task, format="letters")
    seqs = H.task_sequences(task, tiny_llama.tokenizer, 256)
    for i, (ids, start) in enumerate(seqs):
        # the targets decode to the correct option's label, and the context is the prompt
        assert tiny_llama.tokenizer.decode(ids[start:]) == task.decision_strings(i)[task.items[i].answer]
        assert tiny_llama.tokenizer.decode(ids[:start]) == task.prompt(i)
    healed = pl.heal(pl.prune(tiny_llama, [3]), task, method="lora", steps=6, lr=1e-2, batch_size=6, progress=True)
    assert healed.healing.losses[-1] < healed.healing.losses[0]
    assert "loss=" in capsys.readouterr().err  # the progress bar shows the loss


# ----------------------------------------------------------------------------- memory
def qwen15b_meta() -> ModelView:
    """Qwen2.5-1.5B's architecture on the meta device (no weights): what the memory check reads."""
    from transformers import Qwen2Config

    from phaselens.models import Model
    from phaselens.parts import find_decoder

    cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(cfg)
    blocks, norm, decoder, unembed = find_decoder(hf, "qwen-1.5b-meta")
    return Model(hf, None, "qwen-1.5b-meta", blocks, norm, decoder, unembed)


def test_parameter_count_of_qwen15b_by_hand():
    model = qwen15b_meta()
    d, ff, kv, V = 1536, 8960, 256, 151936
    per_block = (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * ff + 2 * d  # q, k, v (biases), o, MLP, 2 norms
    assert per_block == 46_797_824
    assert H.count_parameters(ModelView(model)) == V * d + 28 * per_block + d == 1_543_714_304
    assert H.count_parameters(ModelView(model, tuple(range(12, 22)))) == V * d + 18 * per_block + d
    est = H.full_memory(1_543_714_304, n_layers=28, d_model=d, d_ff=ff, vocab=V, tokens=8 * 256)
    assert est["weights_grads_adam"] == pytest.approx(1_543_714_304 * 16 / 1e9)
    assert est["total"] > 24


@pytest.mark.bad_input
def test_full_fine_tuning_too_big_is_refused_before_any_work(tmp_path):
    view = ModelView(qwen15b_meta())  # meta weights: any forward pass or export would fail, so none happens
    with pytest.raises(pl.errors.HealError, match=r"needs about \d+\.\d GB.*more than the 24\.0 GB.*method='lora'"):
        pl.heal(view, TEXTS, method="full", steps=10, memory_gb=24, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.bad_input
@pytest.mark.parametrize("kw, match", [
    (dict(method="qlora"), "method='qlora'"),
    (dict(steps=0), "steps must be an int >= 1, got 0"),
    (dict(steps=2.5), "steps must be an int >= 1, got 2.5"),
    (dict(lr=0), "lr must be a positive number.*got 0"),
    (dict(lr=-1e-4), "lr must be a positive number.*got -0.0001"),
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(data="arc-easy"), "data='arc-easy'.*load_task"),
    (dict(data=[]), "data holds no text"),
    (dict(data=["ok", 3]), r"data\[1\] is a int"),
    (dict(method="full", memory_gb=1e-3), r"full fine-tuning of .* needs about .* GB.*method='lora'"),
])
def test_bad_arguments_are_refused_before_any_work(kw, match, tiny_llama, count_forwards, tmp_path):
    args = dict(data=TEXTS, steps=2)
    args.update(kw)
    data = args.pop("data")
    with count_forwards(tiny_llama) as c, pytest.raises(pl.errors.HealError, match=match):
        pl.heal(pl.prune(tiny_llama, [2]), data, out=tmp_path / "run", progress=False, **args)
    assert c.n == 0
    assert not (tmp_path / "run").exists()


@pytest.mark.bad_input
def test_run_folder_of_another_configuration_is_refused(tiny_llama, tmp_path, count_forwards):
    view = pl.prune(tiny_llama, [2])
    pl.heal(view, TEXTS[:2], method="lora", steps=1, lr=1e-3, out=tmp_path / "run", progress=False)
    with count_forwards(tiny_llama) as c, pytest.raises(pl.errors.RunFolderError, match=r"other arguments.*steps"):
        pl.heal(view, TEXTS[:2], method="lora", steps=2, lr=1e-3, out=tmp_path / "run", progress=False)
    assert c.n == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(pl.errors.HealError, match=r"other is not empty and holds no healing run"):
        pl.heal(view, TEXTS[:2], method="lora", steps=1, out=tmp_path / "other", progress=False)


# ----------------------------------------------------------------------------- SmolLM2 (one slow test)
@pytest.mark.slow
def test_smollm2_lora_heal_equals_peft(smol, tmp_path):
    from peft import PeftModel

    view = pl.prune(smol, [20, 21, 22])
    healed = pl.heal(view, TEXTS, method="lora", steps=2, lr=1e-3, batch_size=3, seq_len=32, out=tmp_path / "run",
                     progress=False)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "start", dtype=torch.float32).eval()
    peft_ref = PeftModel.from_pretrained(ref, tmp_path / "run" / "adapter").eval()
    ids, mask = encode(smol.tokenizer, TEXTS[:2])
    m = mask.bool()
    close(runner_logits(healed, ids, mask)[m], hf_logits(peft_ref, ids, mask)[m])
    assert math.isfinite(healed.healing.losses[-1])

"""Where the parts of a decoder live: its blocks, final norm, unembedding, and each block's two
residual branches (attention and MLP). The one place phaselens looks a module up by name.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import ModelError, RunnerError

#: Attribute paths of the decoder blocks (an ``nn.ModuleList``) in the model families we know.
BLOCK_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
#: Attribute paths of the final norm, in the same order.
NORM_PATHS = ("model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
              "model.decoder.final_layer_norm")
#: Modules a readout would skip if it went straight from the final norm to W_U (names from
#: TransformerLens' logit_lens): a model carrying one is refused.
READOUT_TRANSFORMS = ("project_out", "mlm_head", "prediction_head", "classifier_ln", "hc_head", "sigma_map")


def getpath(obj: Any, path: str) -> Any:
    """``obj.a.b.c`` for ``path = "a.b.c"``, or ``None`` where a part is missing."""
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def unwrap(mod: nn.Module) -> nn.Module:
    """The original module inside a TransformerLens bridge wrapper (or the module itself)."""
    inner = getattr(mod, "_modules", {}).get("_original_component")
    return inner if inner is not None else mod


def find_decoder(hf: nn.Module, name: str) -> tuple[list[nn.Module], nn.Module, nn.Module, nn.Module]:
    """``(blocks, final_norm, decoder, unembedding)`` of a causal LM; a :class:`ModelError` when one is missing.

    ``decoder`` is the module whose forward runs embeddings -> blocks -> final norm (no LM head).
    Bridge wrappers around the blocks stay (the decoder calls them); the norm and unembedding are unwrapped.
    """
    for comp in READOUT_TRANSFORMS:
        if any(n.split(".")[-1] == comp for n, _ in hf.named_modules()):
            raise ModelError(
                f"{name}: its readout is not final norm -> unembedding (it has a {comp!r} module between them), "
                "so a logit lens through norm and W_U would not be the model's own readout. phaselens refuses it."
            )
    blocks_path = next((p for p in BLOCK_PATHS if isinstance(getpath(hf, p), nn.ModuleList)), None)
    norm_path = next((p for p in NORM_PATHS if getpath(hf, p) is not None), None)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if blocks_path is None or norm_path is None or head is None:
        raise ModelError(
            f"{name} ({type(hf).__name__}): could not find decoder blocks, a final norm and an unembedding; "
            "phaselens supports decoder-only causal LMs whose readout is final norm -> unembedding"
        )
    blocks = list(getpath(hf, blocks_path))
    decoder = getpath(hf, blocks_path.rsplit(".", 1)[0])
    return blocks, unwrap(getpath(hf, norm_path)), decoder, unwrap(head)


def mlp_branch(block: nn.Module) -> nn.Module:
    """The module whose output is the MLP branch's write into the residual stream of ``block``:
    ``post_feedforward_layernorm`` (Gemma: the norm follows the MLP) or ``mlp`` (Llama, Qwen and most others)."""
    inner = unwrap(block)
    for name in ("post_feedforward_layernorm", "mlp", "feed_forward"):
        mod = getattr(inner, name, None)
        if isinstance(mod, nn.Module):
            return unwrap(mod)
    raise RunnerError(f"cannot find the MLP branch of {type(inner).__name__} (looked for .post_feedforward_layernorm, "
                      ".mlp, .feed_forward); ReplaceMe and zero-ablation need one")


def attention_branch(block: nn.Module) -> nn.Module:
    """The module whose output is the attention branch's write into the residual stream of ``block``:
    ``post_attention_layernorm`` where the block also has a ``pre_feedforward_layernorm`` (Gemma 2/3: the norm
    follows attention), else the attention module (Llama, Qwen and most others; note that Llama's
    ``post_attention_layernorm`` is the MLP's *input* norm)."""
    inner = unwrap(block)
    if isinstance(getattr(inner, "pre_feedforward_layernorm", None), nn.Module):
        mod = getattr(inner, "post_attention_layernorm", None)
        if isinstance(mod, nn.Module):
            return unwrap(mod)
    for name in ("self_attn", "attn", "attention"):
        mod = getattr(inner, name, None)
        if isinstance(mod, nn.Module):
            return unwrap(mod)
    raise RunnerError(f"cannot find the attention branch of {type(inner).__name__} (looked for .self_attn, .attn, "
                      ".attention); zero-ablation needs one")


def branch(block: nn.Module, which: str) -> nn.Module:
    """``"mlp"`` or ``"attn"`` branch of ``block``."""
    return mlp_branch(block) if which == "mlp" else attention_branch(block)

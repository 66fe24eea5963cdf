"""Type aliases of the public API."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Union

if TYPE_CHECKING:
    from torch import nn

    from .models import Model
    from .tasks import Item, Task
    from .view import ModelView

#: Anything a model argument takes: an embedded name (``"smollm2-135m"``), a Hugging Face name or folder, a
#: ``.gguf`` path, a :class:`~phaselens.Model`, a pruned / recovered view, a ``transformers`` causal LM, or a
#: TransformerLens ``TransformerBridge`` (an ``nn.Module``).
ModelLike = Union[str, os.PathLike, "Model", "ModelView", "nn.Module"]

#: Anything a task argument takes: a built-in name (``"capitals"``), a benchmark (``"arc-easy"``,
#: ``"mmlu:anatomy"``), a JSONL/CSV path, a :class:`~phaselens.Task`, or a list of items / dicts.
TaskLike = Union[str, os.PathLike, "Task", Iterable[Union["Item", Mapping[str, Any]]]]

__all__ = ["ModelLike", "TaskLike"]

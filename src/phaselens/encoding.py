"""Turn a :class:`~phaselens.tasks.Task` into token ids for the lens.

Decision tokens are found the way lm-evaluation-harness finds continuations: encode
``prompt + decision_string`` and ``prompt``, and take the tokens after the prompt's.
So the token read is exactly the one the model would have to produce next, whatever
the tokenizer does with leading spaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .deprecation import module_getattr
from .errors import TaskError
from .tasks.base import Task


@dataclass
class Encoded:
    """Token ids of a task for one tokenizer.

    Attributes:
        prompts: ``N`` prompt token lists (``letters``/``cloze``) or ``N*K`` context token
            lists, one per (item, option) (``continuation``).
        option_ids: ``[N, K]`` decision token ids (``letters``/``cloze``; 0 where padded).
        option_mask: ``[N, K]`` True for real options (items may have fewer than ``K``).
        answers: ``[N]`` correct option index.
        continuations: for ``continuation``, ``N*K`` token lists scored after each context.
        rows: for ``continuation``, ``N*K`` pairs ``(item, option)`` giving each sequence's place.
    """

    format: str
    prompts: list[list[int]]
    option_ids: torch.Tensor
    option_mask: torch.Tensor
    answers: torch.Tensor
    continuations: list[list[int]] | None = None
    rows: list[tuple[int, int]] | None = None

    @property
    def n_items(self) -> int:
        return int(self.answers.shape[0])

    @property
    def n_options(self) -> int:
        return int(self.option_mask.shape[1])


def _split(tokenizer, prompts: list[str], conts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, continuation ids) for each pair, continuation = ids(prompt+cont)[len(ids(prompt)):]."""
    ctx = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    whole = tokenizer([p + c for p, c in zip(prompts, conts)], add_special_tokens=True)["input_ids"]
    out_ctx, out_cont = [], []
    for c, w, p, s in zip(ctx, whole, prompts, conts):
        if w[: len(c)] == c and len(w) > len(c):
            out_ctx.append(c)
            out_cont.append(w[len(c) :])
        else:
            # The prompt's last token merged with the continuation: read the continuation alone.
            alone = tokenizer(s, add_special_tokens=False)["input_ids"]
            if not alone:
                raise TaskError(f"decision string {s!r} encodes to no tokens")
            out_ctx.append(c)
            out_cont.append(alone)
    return out_ctx, out_cont


def encode_task(task: Task, tokenizer) -> Encoded:
    """Tokenize every item of ``task``; raises :class:`TaskError` naming the item when its
    decision tokens are not usable (a letter label of two tokens, two cloze options sharing
    their first token)."""
    n, kmax = len(task.items), task.max_options
    prompts = [task.prompt(i) for i in range(n)]
    answers = torch.tensor(task.answers, dtype=torch.long)
    mask = torch.zeros(n, kmax, dtype=torch.bool)
    for i, it in enumerate(task.items):
        mask[i, : len(it.options)] = True
    pairs = [(i, k) for i, it in enumerate(task.items) for k in range(len(it.options))]
    strings = [task.decision_strings(i)[k] for i, k in pairs]
    ctx, conts = _split(tokenizer, [prompts[i] for i, _ in pairs], strings)
    option_ids = torch.zeros(n, kmax, dtype=torch.long)

    if task.format == "continuation":
        for (i, k), c in zip(pairs, conts):
            option_ids[i, k] = c[0]
        return Encoded("continuation", ctx, option_ids, mask, answers, conts, pairs)

    first_ctx = {}
    for (i, k), c, cont, s in zip(pairs, ctx, conts, strings):
        if task.format == "letters" and len(cont) != 1:
            raise TaskError(
                f"item {task.items[i].id or i}: the label {s!r} is {len(cont)} tokens for this tokenizer "
                f"({cont}); letters needs single-token labels. Pass a LettersTemplate with another "
                "label_prefix (e.g. '') or use format='cloze'/'continuation'"
            )
        option_ids[i, k] = cont[0]
        first_ctx.setdefault(i, c)
    for i, it in enumerate(task.items):
        ids = option_ids[i, : len(it.options)].tolist()
        if len(set(ids)) != len(ids):
            dup = [it.options[k] for k in range(len(ids)) if ids.count(ids[k]) > 1]
            raise TaskError(
                f"item {it.id or i} ({it.question[:50]!r}): options {dup} share their first token "
                f"({tokenizer.convert_ids_to_tokens(ids)}), so the {task.format} format cannot tell them "
                "apart; reword the options or use format='continuation'"
            )
    return Encoded(task.format, [first_ctx[i] for i in range(n)], option_ids, mask, answers)


__getattr__ = module_getattr(__name__, {"encode": f"{__name__}:encode_task"})  # the old name of encode_task

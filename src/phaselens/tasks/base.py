"""Multiple-choice items, tasks and the three prompt formats.

A :class:`Task` is a list of :class:`Item` (question, options, answer index) plus the
format that turns each item into a prompt and one *decision string* per option:

``letters``
    An MMLU/ARC-style prompt that lists lettered options. With the default
    :class:`LettersTemplate` the prompt ends in ``"Answer:"`` and the decision tokens
    are the labels **with a leading space**: ``" A"``, ``" B"``, ... (what a model
    writes after ``"Answer:"``).
``cloze``
    The bare question. The decision token of option ``k`` is the first token of
    ``" " + options[k]``.
``continuation``
    The bare question. Option ``k`` is scored by the summed log-probability of all
    tokens of ``" " + options[k]`` (lm-evaluation-harness style, per layer).

Tokenization lives in :mod:`phaselens.encoding`; nothing here depends on a model.
"""

from __future__ import annotations

import dataclasses
import random
import string
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

Format = Literal["letters", "cloze", "continuation"]
FORMATS: tuple[str, ...] = ("letters", "cloze", "continuation")


from ..errors import TaskError


@dataclass(frozen=True)
class Item:
    """One multiple-choice question.

    Attributes:
        question: the prompt text (for cloze/continuation, the text the option continues).
        options: the ``K >= 2`` answer options, in slot order (slot 0 is "A").
        answer: 0-based index of the correct option.
        id: a stable identifier used in error messages and outputs.
    """

    question: str
    options: tuple[str, ...]
    answer: int
    id: str = ""
    group: str = ""  # the item's subject (MMLU), used by the header and by first-n few-shot selection

    def __post_init__(self) -> None:
        name = self.id or repr(self.question[:60])
        if not isinstance(self.question, str):
            raise TaskError(f"item {name}: question must be a string, got {type(self.question).__name__}")
        if isinstance(self.options, (str, bytes, dict)) or not isinstance(self.options, (list, tuple)):
            raise TaskError(f"item {name}: options must be a list of strings (one per option), got a "
                            f"{type(self.options).__name__} {self.options!r:.80}; e.g. options=['Paris', 'Lyon']")
        opts = tuple(self.options)
        object.__setattr__(self, "options", opts)
        if len(opts) < 2:
            raise TaskError(f"item {name}: needs at least two options, got {len(opts)}")
        for k, o in enumerate(opts):
            if not isinstance(o, str) or not o.strip():
                raise TaskError(f"item {name}: option {k} is empty; every option needs text")

        if isinstance(self.answer, bool) or not isinstance(self.answer, int):
            raise TaskError(f"item {name}: answer must be an int index, got {self.answer!r}")
        if not 0 <= self.answer < len(opts):
            raise TaskError(
                f"item {name}: answer index {self.answer} is out of range for {len(opts)} options "
                f"(valid: 0..{len(opts) - 1})"
            )

    @property
    def n_options(self) -> int:
        return len(self.options)

    @property
    def repeated_options(self) -> tuple[int, int] | None:
        """The first pair of option slots with the same text, or ``None``."""
        seen: dict[str, int] = {}
        for k, o in enumerate(self.options):
            if o.strip() in seen:
                return seen[o.strip()], k
            seen[o.strip()] = k
        return None

    def shuffled(self, rng: random.Random) -> "Item":
        """The same item with its options permuted by ``rng`` (answer index follows)."""
        order = list(range(len(self.options)))
        rng.shuffle(order)
        return Item(self.question, tuple(self.options[j] for j in order), order.index(self.answer), self.id, self.group)


@dataclass(frozen=True)
class LettersTemplate:
    """How a ``letters`` prompt is laid out.

    The default renders::

        Question: What is the capital of France?
        A. Paris
        B. Lyon
        Answer:

    and reads the decision tokens ``label_prefix + label``, i.e. ``" A"``, ``" B"``. ``header`` is put once
    before the few-shot examples (``{subject}`` is the item's group with ``_`` as spaces);
    :meth:`mmlu` is lm-evaluation-harness' MMLU layout, the default of the ``mmlu`` tasks.
    """

    question: str = "Question: {question}\n"
    option: str = "{label}. {option}\n"
    answer: str = "Answer:"
    labels: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    label_prefix: str = " "
    header: str = ""

    strip_question: bool = False

    def __post_init__(self) -> None:
        for field_name, required, allowed in (("question", {"question"}, {"question"}),
                                              ("option", {"label", "option"}, {"label", "option"}),
                                              ("answer", set(), set()), ("header", set(), {"subject"})):
            _check_placeholders(f"LettersTemplate.{field_name}", getattr(self, field_name), required, allowed)
        if not isinstance(self.labels, str) or len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise TaskError(f"LettersTemplate.labels must be a string of at least 2 distinct labels, got {self.labels!r}")

    @classmethod
    def mmlu(cls) -> "LettersTemplate":
        """lm-evaluation-harness' MMLU prompt: ``"The following are multiple choice questions (with answers) about
        {subject}.\n\n"``, then ``"{question.strip()}\nA. ...\nB. ...\nC. ...\nD. ...\nAnswer:"``, targets ``" A"``.."""
        return cls(question="{question}\n", header="The following are multiple choice questions (with answers) about "
                   "{subject}.\n\n", strip_question=True)

    def render(self, item: Item) -> str:
        if len(item.options) > len(self.labels):
            raise TaskError(f"item {item.id}: {len(item.options)} options but only {len(self.labels)} labels")
        body = self.question.format(question=item.question.strip() if self.strip_question else item.question)
        for label, opt in zip(self.labels, item.options):
            body += self.option.format(label=label, option=opt)
        return body + self.answer

    def decision_strings(self, item: Item) -> list[str]:
        return [self.label_prefix + label for label in self.labels[: len(item.options)]]


@dataclass(frozen=True)
class Task:
    """A named list of items in one format.

    Attributes:
        name: short name used in outputs (``"capitals"``, ``"arc-easy"``).
        items: the evaluated items.
        format: ``"letters"``, ``"cloze"`` or ``"continuation"``.
        template: the letters layout (``None`` for the other formats).
        shots: number of solved examples prepended to every prompt.
        fewshot_pool: items the shots are drawn from (never the evaluated ones).
        fewshot: how shots are chosen, as lm-evaluation-harness does: ``"sampler"`` (one
            ``random.Random(fewshot_seed)`` drawing ``shots`` examples from the pool for each evaluated item in
            turn, lm-eval's default sampler; ARC, HellaSwag, the built-in tasks) or ``"first_n"`` (the first
            ``shots`` examples of the item's own group, lm-eval's MMLU).
        fewshot_seed: the sampler's seed (lm-eval's default 1234).
        seed: seed for option shuffling and subsets.
        source: where the items came from (path or description).
        reformulated: True when a continuation benchmark (ARC, HellaSwag) is asked in
            the letters format, which is not how lm-evaluation-harness scores it.
        cloze_template: how a ``cloze``/``continuation`` prompt wraps the question
            (lm-evaluation-harness' layouts: ``"Question: {question}\nAnswer:"`` for ARC and
            MMLU, ``"Q: {question}\nA:"`` for TruthfulQA, the bare text for HellaSwag and
            the built-in tasks).
    """

    name: str
    items: tuple[Item, ...]
    format: Format = "cloze"
    template: LettersTemplate | None = None
    shots: int = 0
    fewshot_pool: tuple[Item, ...] = ()
    seed: int = 0
    source: str = ""
    reformulated: bool = False
    cloze_template: str = "{question}"
    fewshot: str = "sampler"
    fewshot_seed: int = 1234
    selection: str = ""  # how the items were chosen: "all 66 items", "the first 50 of 2376 items", ...
    native_layout: tuple | None = None  # (format, letters template, cloze template) of the benchmark's lm-eval layout
    _shot_cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        object.__setattr__(self, "fewshot_pool", tuple(self.fewshot_pool))
        if self.format not in FORMATS:
            raise TaskError(f"task {self.name}: unknown format {self.format!r}; choose one of {FORMATS}")
        _check_placeholders(f"task {self.name}: cloze_template", self.cloze_template, {"question"}, {"question"})
        if not self.items:
            raise TaskError(f"task {self.name}: has no items")
        if self.format in ("cloze", "continuation"):
            bad = [it for it in self.items if it.repeated_options is not None]
            if bad:
                it = bad[0]
                a, b = it.repeated_options  # type: ignore[misc]
                raise TaskError(
                    f"task {self.name}: {len(bad)} item(s) repeat an option text (first: item {it.id or it.question[:40]!r}, "
                    f"options {a} and {b} are both {it.options[a].strip()!r}); in the {self.format} format they score the "
                    "same, so the margin would be exactly 0. Use format='letters' (the labels tell them apart), or "
                    "load_task(..., duplicates='drop') to leave those items out")
        if self.format == "letters" and self.template is None:
            object.__setattr__(self, "template", LettersTemplate())
        if self.shots < 0:
            raise TaskError(f"task {self.name}: shots must be >= 0, got {self.shots}")
        if self.fewshot not in ("sampler", "first_n"):
            raise TaskError(f"task {self.name}: fewshot must be 'sampler' or 'first_n', got {self.fewshot!r}")
        if self.shots and len(self.fewshot_pool) < self.shots:
            raise TaskError(
                f"task {self.name}: {self.shots} shots asked but only {len(self.fewshot_pool)} "
                "few-shot examples are available; lower shots"
            )

    def __len__(self) -> int:
        return len(self.items)

    @property
    def answers(self) -> list[int]:
        return [it.answer for it in self.items]

    @property
    def max_options(self) -> int:
        return max(len(it.options) for it in self.items)

    @property
    def layout_note(self) -> str:
        """``""`` when the prompts follow the benchmark's lm-evaluation-harness layout (or there is no benchmark),
        else what differs, in words."""
        if self.native_layout is None:
            return ""
        fmt, letters, cloze = self.native_layout
        if self.format != fmt:
            what = ("a reformulation: lm-eval scores it by continuation" if self.reformulated
                    else f"lm-eval asks it in the {fmt} format")
            return f"{self.name} in the {self.format} format ({what})"
        if fmt == "letters" and (self.template or LettersTemplate()) != (letters or LettersTemplate()):
            return f"{self.name} with a letters layout other than lm-eval's"
        if fmt != "letters" and self.cloze_template != cloze:
            return f"{self.name} with the prompt template {self.cloze_template!r}, not lm-eval's {cloze!r}"
        return ""

    def with_items(self, items: Sequence[Item]) -> "Task":
        """The same task (format, templates, few-shot pool) on other items, e.g. ``task.with_items(task.items[:20])``."""
        return dataclasses.replace(self, items=tuple(items), selection=f"{len(items)} items chosen by hand",
                                   _shot_cache={})

    def with_format(self, format: Format, template: LettersTemplate | None = None) -> "Task":
        reform = self.reformulated or (format == "letters" and self.format == "continuation")
        return dataclasses.replace(self, format=format, template=template, reformulated=reform, _shot_cache={})

    # -- prompts ----------------------------------------------------------------
    def _render_solved(self, item: Item) -> str:
        if self.format == "letters":
            assert self.template is not None
            return self.template.render(item) + self.template.decision_strings(item)[item.answer]
        return self.cloze_template.format(question=item.question) + " " + item.options[item.answer]

    def shots_of(self, index: int) -> list[Item]:
        """The solved examples shown before item ``index``, chosen as lm-evaluation-harness does (see ``fewshot``)."""
        if not self.shots:
            return []
        if self.fewshot == "first_n":
            own = [s for s in self.fewshot_pool if s.group == self.items[index].group]
            if len(own) < self.shots:
                raise TaskError(f"task {self.name}: item {self.items[index].id} (group {self.items[index].group!r}) has "
                                f"{len(own)} few-shot examples of its own group, fewer than shots={self.shots}")
            return own[: self.shots]
        if "sampler" not in self._shot_cache:  # one generator over the evaluated items, in order (lm-eval)
            rnd = random.Random(self.fewshot_seed)
            pool = list(self.fewshot_pool)
            self._shot_cache["sampler"] = [rnd.sample(pool, self.shots) for _ in self.items]
        return self._shot_cache["sampler"][index]

    def _header(self, index: int) -> str:
        if self.format != "letters" or not self.template or not self.template.header:  # type: ignore[union-attr]
            return ""
        return self.template.header.format(subject=self.items[index].group.replace("_", " "))  # type: ignore[union-attr]

    def prompt(self, index: int) -> str:
        """The text fed to the model for item ``index`` (decision is the next token)."""
        item = self.items[index]
        if self.format == "letters":
            body = self.template.render(item)  # type: ignore[union-attr]
        else:
            body = self.cloze_template.format(question=item.question)
        shots = "".join(self._render_solved(s) + "\n\n" for s in self.shots_of(index))
        return self._header(index) + shots + body

    def decision_strings(self, index: int) -> list[str]:
        """One string per option whose (first) token(s) the lens reads."""
        item = self.items[index]
        if self.format == "letters":
            return self.template.decision_strings(item)  # type: ignore[union-attr]
        return [" " + o for o in item.options]


def _check_placeholders(where: str, text: Any, required: set[str], allowed: set[str]) -> None:
    """A :class:`TaskError` naming ``where`` when ``text`` is not a string, lacks a ``{required}`` placeholder
    (the text would be dropped from every prompt) or has one outside ``allowed`` (it would fail on format)."""
    if not isinstance(text, str):
        raise TaskError(f"{where} must be a string, got {type(text).__name__}")
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as e:
        raise TaskError(f"{where} = {text!r} is not a valid format string ({e}); write a literal brace as {{{{ or }}}}") from None
    bad = sorted(n for n in names if n not in allowed)
    if bad:
        raise TaskError(f"{where} = {text!r} has unknown placeholder(s) {['{' + b + '}' for b in bad]}; "
                        f"allowed: {['{' + a + '}' for a in sorted(allowed)] or 'none'}")
    missing = sorted(required - names)
    if missing:
        raise TaskError(f"{where} = {text!r} has no {['{' + m + '}' for m in missing]} placeholder, so that text would "
                        f"be dropped from every prompt; e.g. {where.split('.')[-1]}=" +
                        repr({"question": "Question: {question}\n", "option": "{label}. {option}\n",
                              "cloze_template": "Question: {question}\nAnswer:"}.get(where.split('.')[-1], "{question}")))


def stratified(items: Sequence[Item], limit: int, seed: int) -> list[Item]:
    """A seeded subset of ``limit`` items spread evenly over the items' groups (MMLU's subjects), file order kept.

    Each of the ``G`` groups gets ``limit // G`` items (all of a smaller group; what it cannot give goes to the
    others, largest first), and the ``limit % G`` left over go to groups drawn with the seed; within a group the
    items are a seeded random subset. ``limit=1140`` on MMLU's 57 subjects is 20 per subject."""
    items = list(items)
    if limit >= len(items):
        return items
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.group, []).append(i)
    if len(groups) < 2:
        raise TaskError(f"sample='stratified' needs items in at least 2 groups (MMLU's subjects); these "
                        f"{len(items)} items have {len(groups)}: use sample=True for a random subset")
    rng = random.Random(seed)
    names = sorted(groups)
    share = {g: 0 for g in names}
    left = limit
    open_ = list(names)
    while left > 0 and open_:  # equal shares; a group that runs out passes its share on
        per, extra = divmod(left, len(open_))
        lucky = set(rng.sample(open_, extra)) if extra else set()
        for g in open_:
            share[g] += per + (g in lucky)
        left = 0
        for g in open_:
            over = share[g] - len(groups[g])
            if over > 0:
                share[g] -= over
                left += over
        open_ = [g for g in open_ if share[g] < len(groups[g])]
    keep = sorted(i for g in names for i in rng.sample(groups[g], share[g]))
    return [items[i] for i in keep]


def subset(items: Sequence[Item], limit: int | None, seed: int) -> list[Item]:
    """A seeded random subset of ``limit`` items, kept in their original order."""
    items = list(items)
    if limit is None or limit >= len(items):
        return items
    if limit <= 0:
        raise TaskError(f"limit must be positive, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]

"""The per-block figure methods of :class:`~phaselens.DecisionTrace` and :class:`~phaselens.Transition`, apart from
their computation (:mod:`phaselens.trace`); :mod:`phaselens.plots` (Plotly) is imported only when a figure is drawn."""

from __future__ import annotations

from typing import Any


class TraceFigures:
    """Per-block figures of a trace or a transition (the transition adds phase shading)."""

    def plot(self, **kw):
        """The margin curve with its bootstrap band (:func:`phaselens.plots.margin_curves`); a
        :class:`Transition` also shades the silent and decisive phases and marks the transition."""
        from .plots import margin_curves  # lazy: plotly is imported only when a figure is drawn

        return margin_curves([self], **kw)

    plot_margin = plot

    def plot_accuracy(self, **kw):
        """Accuracy per block with bootstrap bands and chance level (:func:`phaselens.plots.accuracy_curves`)."""
        from .plots import accuracy_curves  # lazy: plotly is imported only when a figure is drawn

        return accuracy_curves([self], **kw)

    def plot_kl(self, **kw):
        """Bias KL and convergence KL per block (:func:`phaselens.plots.kl_curves`)."""
        from .plots import kl_curves  # lazy: plotly is imported only when a figure is drawn

        return kl_curves([self], **kw)

    def plot_option_frequency(self, kind: str = "stacked", **kw):
        """Option frequency per block: ``kind="stacked"``, ``"area"`` or ``"radar"`` (slider over blocks)."""
        from .plots import option_frequency  # lazy: plotly is imported only when a figure is drawn

        return option_frequency(self, kind, **kw)

    def figures(self) -> list[tuple[str, Any]]:
        return [
            ("Decision Margin per block: mean over items of the correct option's logit minus the best other's; "
             "band = bootstrap 95% interval over items.", self.plot()),
            ("Accuracy of the option-restricted readout per block; band = bootstrap 95% interval.", self.plot_accuracy()),
            ("Bias KL (positional bias against the answer key) and convergence KL (distance to the final block's "
             "option distribution).", self.plot_kl()),
            ("Option frequency: the share of items whose top option is each slot, per block.",
             self.plot_option_frequency("stacked")),
            ("The same option frequencies as a radar; the slider picks the block.", self.plot_option_frequency("radar")),
        ]

    @classmethod
    def overview(cls, results: dict[str, Any]) -> list[tuple[str, Any]]:
        from . import plots  # lazy: plotly is imported only when a figure is drawn

        figs = [("Decision Margin per block, every trace of the folder on the original-block axis.", plots.margin_curves(results)),
                ("Accuracy per block.", plots.accuracy_curves(results)),
                ("Bias KL and convergence KL per block.", plots.kl_curves(results))]
        return figs + cls.lens_overview(results)

    @staticmethod
    def lens_overview(results: dict[str, Any]) -> list[tuple[str, Any]]:
        """Per (model, task) read through two or more lenses: the margin curves of each lens on one axis."""
        from . import plots  # lazy: plotly is imported only when a figure is drawn

        groups: dict[tuple[str, str, str], dict[str, Any]] = {}
        for r in results.values():
            t = getattr(r, "trace", r)
            groups.setdefault((t.model, t.task, t.format), {}).setdefault(f"{t.lens} lens", r)
        out = []
        for (model, task, _), by_lens in groups.items():
            if len(by_lens) > 1:
                out.append((f"Is the silent phase a readout effect? {model} on {task}: Decision Margin per block under each "
                            "lens (logit, linear, tuned; bands: bootstrap 95% over items).",
                            plots.margin_curves(by_lens, title=f"{model} on {task}: margins under each lens")))
        return out

"""The paper claims the analyses test, by the effect that tests them (shared by the scripts and analyses/runs)."""

DT = "decision-transition (arXiv 2605.07271)"
JOINT = "joint hypothesis (phaselens)"
#: Figs. 2, 10, 11: what CKA of dense against pruned representations shows
CKA_DIVERGE = ("after pruning, decision-token representations diverge from the dense model's more than hidden states "
               "do (hidden-state similarity alone does not show the collapse)")
#: its control: is the divergence the decision position's own, or that of any position of the prompt's template?
CKA_CONTROL = ("after pruning, the decision token's representation diverges from the dense model's more than that of "
               "the template token just before it (the divergence is the decision position's, not any fixed position's)")


def phase_cut_claim(effect_name: str) -> tuple[str, str]:
    """``(paper, claim)`` that a :meth:`PhaseCuts.effects` effect tests, from the effect's name."""
    if effect_name.startswith("silent − decisive") and "plain" in effect_name:
        return DT, "pruning the silent phase drops the final margin more than pruning the decisive phase"
    if effect_name.startswith("silent − decisive"):
        return JOINT, "after recovery the silent-phase cut still costs more than the decisive-phase cut"
    return JOINT, "recovery holds the decisive-phase cut better than the silent-phase cut (the interaction of recovery and phase)"

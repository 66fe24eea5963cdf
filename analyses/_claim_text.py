"""The paper claims the analyses test, by the effect that tests them (shared by the scripts and analyses/runs)."""

DT = "decision-transition (arXiv 2605.07271)"
JOINT = "joint hypothesis (phaselens)"


def phase_cut_claim(effect_name: str) -> tuple[str, str]:
    """``(paper, claim)`` that a :meth:`PhaseCuts.effects` effect tests, from the effect's name."""
    if effect_name.startswith("silent − decisive") and "plain" in effect_name:
        return DT, "pruning the silent phase drops the final margin more than pruning the decisive phase"
    if effect_name.startswith("silent − decisive"):
        return JOINT, "after recovery the silent-phase cut still costs more than the decisive-phase cut"
    return JOINT, "recovery holds the decisive-phase cut better than the silent-phase cut (the interaction of recovery and phase)"

"""Evaluations: judges, the free-form misalignment eval, judge-free log-prob evals, the ethical
persona diagnostic, safety categories, projectability and judge agreement.

Every eval writes one JSON line per item (re-drawable without re-running a model) and a summary
whose numbers carry bootstrap confidence intervals.
"""

from persona_probe.evals.judges import Judge, Judgment, make_judge

__all__ = ["Judge", "Judgment", "make_judge"]

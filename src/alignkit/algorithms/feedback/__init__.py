"""Learning from language feedback and conditioned training: ``algorithm: feedback``, one registered method
per paper (``feedback.method``), each a small :class:`~alignkit.engine.contract.Algorithm` on the shared engine.

==================  =========================================================  =====================
method              what it learns from                                        rows (data.kind)
==================  =========================================================  =====================
``hindsight``       Chain of Hindsight: answers after feedback phrases         pair, critique
``cut``             CUT: unlikelihood on the tokens a negative judgment flags  spans, critique
``ilf``             ILF: refine with the critique, select, fine-tune           critique
``c_rlft``          C-RLFT: quality-class-conditioned weighted SFT             sft (+ a class field)
``reward_augmented`` reward-augmented DPO: score-conditioned relabelled pairs  pair (+ two scores)
``modpo``           MODPO: one objective's pairs, the others' reward margins   pair
``dpa``             DPA: direction-conditioned rejection-sampling fine-tuning  sft (prompts)
==================  =========================================================  =====================

System-message / value-profile / principle conditioning needs no method: ``data.format: system`` folds a
row's ``system`` field into its prompt for any algorithm (``sft``, ``dpo``, ...; :mod:`alignkit.data.feedback_kinds`).
``docs/feedback.md`` has the formulas and recipes.
"""

from __future__ import annotations

from ...config import ConfigError
from . import c_rlft, cut, dpa, hindsight, ilf, modpo, reward_augmented  # noqa: F401  (register the methods)
from .base import CONDITIONING_FILE, FEEDBACK_METHODS, FeedbackMethod, conditioned_prompt
from .data import critique_samples

__all__ = ["CONDITIONING_FILE", "FEEDBACK_METHODS", "Feedback", "FeedbackMethod", "conditioned_prompt", "critique_samples"]


def Feedback(recipe) -> FeedbackMethod:  # noqa: N802 - stands in the ALGORITHMS table beside the classes
    """The method ``recipe.feedback.method`` names (a :class:`ConfigError` lists the registered ones)."""
    name = recipe.feedback.method
    if name not in FEEDBACK_METHODS:
        raise ConfigError(f"feedback.method: {FEEDBACK_METHODS.unknown(name)}")
    return FEEDBACK_METHODS.get(name)(recipe)

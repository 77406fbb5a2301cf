"""The reference policy: one object for every kind of reference an algorithm compares against.

A :class:`Reference` gives target log-probs of a batch (the same call as
:class:`~alignkit.models.logprobs.TargetLogProbs`, always without gradient) under:

* ``frozen`` — a frozen copy of the starting policy (on resume, reloaded from the starting weights);
* ``lora_off`` — the live policy with its LoRA adapter switched off (no second model in memory);
* ``live`` — the live policy as it is now: valid only for work before the first update (a cache);
* ``opponent`` — any model swapped in by a loop (the previous iterate, another player).

``refresh(policy, alpha)`` moves a frozen or opponent reference toward the policy (TR-DPO's soft update,
``alpha = 1`` copies it); ``swap(model)`` replaces it. ``changes`` says whether checkpoints must carry it
(``checkpoint_module()`` is then what they save). Cached log-probs (``dpo.reference: cache``) are values computed
once with a reference and stored on the examples; the engine computes them only for the examples the
remaining steps will read.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
from torch import nn

from .loading import is_peft
from .logprobs import TargetLogProbs

KINDS = ("frozen", "lora_off", "live", "opponent")


class Reference:
    def __init__(self, model: nn.Module, kind: str, temperature: float = 1.0):
        if kind not in KINDS:
            raise ValueError(f"unknown reference kind {kind!r}; allowed: {', '.join(KINDS)}")
        self.kind = kind
        self.scorer = TargetLogProbs(model, temperature)
        self.changes = False  # refreshed or swapped since the start: checkpoints carry it

    @property
    def model(self) -> nn.Module:
        return self.scorer.model

    @property
    def temperature(self) -> float:
        return self.scorer.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.scorer.temperature = value

    def context(self):
        """Where the reference's forward runs: the adapter switched off for ``lora_off``."""
        return self.model.disable_adapter() if self.kind == "lora_off" else contextlib.nullcontext()

    @torch.no_grad()
    def __call__(self, *args, **kwargs) -> torch.Tensor:
        """Target log-probs [B, T] (or TargetLogProbs' tuple with ``return_logits``) under the reference."""
        with self.context():
            return self.scorer(*args, **kwargs)

    logps = __call__

    @torch.no_grad()
    def refresh(self, policy: nn.Module, alpha: float = 1.0) -> None:
        """``ref <- alpha * policy + (1 - alpha) * ref`` parameter by parameter (``alpha = 1``: a copy)."""
        if self.kind not in ("frozen", "opponent"):
            raise ValueError(f"a {self.kind} reference cannot be refreshed (it is the policy's own weights); use a frozen copy")
        for ref, cur in zip(self.model.parameters(), policy.parameters()):
            ref.mul_(1 - alpha).add_(cur.detach(), alpha=alpha)
        self.changes = True

    def swap(self, model: nn.Module) -> None:
        """Compare against ``model`` from now on (e.g. the previous iterate of a self-play loop)."""
        model.eval()
        model.requires_grad_(False)
        self.scorer = TargetLogProbs(model, self.temperature)
        self.kind = "opponent"
        self.changes = True

    def checkpoint_module(self) -> nn.Module:
        """What a checkpoint saves when the reference changes during training."""
        return self.model


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def starting_reference(model: nn.Module, keep: bool, resumed: bool, load_start: Callable[[], nn.Module]) -> Reference:
    """The *starting* policy as a reference.

    LoRA: the live policy with its adapter off. Otherwise a frozen copy when ``keep`` (it is run during
    training) or when ``resumed`` (the starting weights are reloaded with ``load_start``, not copied from
    the resumed policy); else the live policy, good only for work done before the first update.
    """
    if is_peft(model):
        return Reference(model, "lora_off")
    if resumed:
        return Reference(frozen(load_start()), "frozen")
    if keep:
        return Reference(frozen(copy.deepcopy(model)), "frozen")
    return Reference(model, "live")

"""The loop's reference updates beyond copying the policy: references that are log-linear combinations of
frozen iterates, and the saving of a reference's weights for round-level resume.

* ``geometric`` — INPO (Zhang et al. 2024, "Iterative Nash policy optimization"): the online-mirror-descent
  iterate ``π_{t+1} ∝ π_t^{1−ητ} π_ref^{ητ} exp(η P(y ≻ π_t))`` is fitted by regressing the pair margin
  against the reference ``log π̃(y) = (1 − a) log π_t(y) + a log π_ref(y)``, ``a = ητ``;
* ``momentum`` — accelerated preference optimisation (He et al. 2024, APO): after round t the next
  reference is the Nesterov extrapolation ``π̂_{t+1} ∝ π_{t+1} (π_{t+1}/π_t)^a``, i.e.
  ``log π̂(y) = (1 + a) log π_{t+1}(y) − a log π_t(y)``.

Both are exact on sequence log-ratio margins: the normaliser of the combination is the same for both
sides of a pair and cancels (on SPPO's per-sample regression it is absorbed in the η/2 term as usual).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.logprobs import TargetLogProbs
from ..models.reference import Reference, frozen


class LogLinearReference(Reference):
    """``log ref(y_t | y_<t) = Σ_i c_i log π_i(y_t | y_<t)`` over frozen models ``π_i`` (token by token, so
    summed sequence log-probs combine the same way). ``window`` models at the front are iterates:
    :meth:`advance` shifts them back one place and copies the policy into the first."""

    def __init__(self, models: list[nn.Module], coefs: list[float], window: int):
        if len(models) != len(coefs) or not 1 <= window <= len(models):
            raise ValueError("LogLinearReference: one coefficient per model and 1 <= window <= len(models)")
        super().__init__(models[0], "frozen")
        self.models = [frozen(m) for m in models]
        self.coefs = [float(c) for c in coefs]
        self.window = window
        self.scorers = [self.scorer] + [TargetLogProbs(m) for m in self.models[1:]]

    @property
    def temperature(self) -> float:
        return self.scorer.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        for scorer in getattr(self, "scorers", [self.scorer]):
            scorer.temperature = value

    @torch.no_grad()
    def __call__(self, *args, return_logits: bool = False, **kwargs) -> torch.Tensor:
        """Target log-probs [B, T] (padded or packed rows: the arguments of :class:`TargetLogProbs`)."""
        if return_logits:
            raise ValueError("a log-linear reference (iterate.reference geometric or momentum) gives log-probs only, no logits")
        out = None
        for c, scorer in zip(self.coefs, self.scorers):
            value = c * scorer(*args, **kwargs)
            out = value if out is None else out + value
        return out

    logps = __call__

    @torch.no_grad()
    def advance(self, policy: nn.Module) -> None:
        """The next round's iterates: ``π_i ← π_{i−1}`` inside the window, ``π_0 ← policy``."""
        for i in range(self.window - 1, 0, -1):
            copy_weights(self.models[i - 1], self.models[i])
        copy_weights(policy, self.models[0])
        self.changes = True


@torch.no_grad()
def copy_weights(source: nn.Module, target: nn.Module) -> None:
    for t, s in zip(target.parameters(), source.parameters()):
        t.copy_(s.detach())


def build_reference(kind: str, model: nn.Module, alpha: float) -> Reference:
    """The loop's reference for ``iterate.reference`` ``kind`` at the start (every iterate is the start ``model``)."""
    if kind == "geometric":  # [π_t, π_start]: (1 − a) log π_t + a log π_start
        return LogLinearReference([copy.deepcopy(model), copy.deepcopy(model)], [1.0 - alpha, alpha], window=1)
    if kind == "momentum":  # [π_t, π_(t−1)]: (1 + a) log π_t − a log π_(t−1)
        return LogLinearReference([copy.deepcopy(model), copy.deepcopy(model)], [1.0 + alpha, -alpha], window=2)
    return Reference(frozen(copy.deepcopy(model)), "frozen")


def reference_models(reference: Reference) -> list[nn.Module]:
    return list(reference.models) if isinstance(reference, LogLinearReference) else [reference.model]


def save_reference(reference: Reference, path: Path) -> None:
    """Every frozen model of ``reference`` in one safetensors file (``<i>.<parameter>``)."""
    tensors = {f"{i}.{k}": v.detach().clone().contiguous().cpu() for i, m in enumerate(reference_models(reference)) for k, v in m.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def load_reference(reference: Reference, path: Path) -> None:
    tensors = load_file(str(path))
    for i, m in enumerate(reference_models(reference)):
        prefix = f"{i}."
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})

"""Warnings for settings that do not suit the model they are applied to (``check_settings``).

alignkit's examples are written for a tiny model trained from scratch (lr 3e-4, β 0.5, max_length 96);
pointed at a pretrained chat model, the same numbers damage it in a step or two. Each check below is one
registered function of :data:`SETTING_CHECKS` that looks at the recipe and at facts about the loaded
model (:class:`ModelFacts`) and returns a one-line warning or ``None``. The thresholds and why:

* ``lr`` — full fine-tuning of a *pretrained* model (``model.path`` set, no LoRA) of more than 50 M
  parameters at ``train.lr ≥ 1e-4``. Published full fine-tuning rates for models of this size and up are
  1e-5..2e-5 for SFT and 5e-7..5e-6 for DPO-style and RL objectives (DPO paper: 1e-6); 3e-4 is a
  from-scratch rate. Below 50 M parameters (tiny or toy models) high rates are normal.
* ``max_length`` — ``data.max_length < 256`` with a tokenizer that has a chat template, on a pretrained
  model of more than 50 M parameters (tiny chat models have short templates): the template's role tokens and default system prompt take tens of tokens before any content
  (SmolLM2's: 30 tokens around an empty user turn), so real chat rows overflow and are refused or cut.
* ``dpo_beta`` — ``dpo.loss=dpo`` with ``dpo.beta ≥ 0.5`` on a pretrained model of more than 50 M
  parameters: 0.1 is the DPO paper's and TRL's value for such models; β = 0.5 is the tiny demo's choice
  for a model that starts far from its data (a larger β holds the policy closer to the reference, so
  with a small lr the run barely moves).
* ``bf16_weights`` — trainable weights stored in bfloat16 (``model.dtype=bfloat16`` without LoRA).
  bf16 keeps 8 significant bits: a weight ``w`` with ``2^e ≤ |w| < 2^(e+1)`` is on a grid of spacing
  ``2^(e-7)``, and an update smaller than half of it rounds back to ``w``. An Adam step moves a weight by
  about ``lr``, so roughly every weight with ``|w| ≥ 256 · lr`` (exactly: those where ``lr < 2^(e-8)``, counted by
  :func:`bf16_unmovable`) is left unchanged: with lr 1e-6, about every weight above 2.6e-4 in magnitude, i.e.
  nearly all of them. The fix: ``model.dtype=float32`` with
  ``train.precision=bf16`` (bf16 autocast for the forward passes, fp32 weights for the update) or
  ``train.precision=bf16_params`` (bf16 weights, fp32 master copies in the optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..core.progress import say
from ..core.registry import Registry

LARGE_MODEL_PARAMETERS = 50_000_000
FULL_FINETUNE_MAX_LR = 1e-4
CHAT_MIN_MAX_LENGTH = 256
DPO_MAX_BETA = 0.5
BF16_RESOLUTION_FACTOR = 256  # an update of lr is lost on a bf16 weight |w| >= 256 * lr (see the module docstring)


@dataclass(frozen=True)
class ModelFacts:
    """What the checks need to know about the loaded model."""

    parameters: int                 # all parameters
    trainable: int                  # parameters with requires_grad
    bf16_trainable: int             # trainable parameters stored in bfloat16
    bf16_frozen_by_lr: int | None   # of those, how many a change of train.lr rounds back to the same value (about |w| >= 256 lr)
    pretrained: bool                # started from model.path (not a tiny model built from scratch)
    chat_template: bool             # the tokenizer renders chat messages with a template

    @property
    def large(self) -> bool:
        return self.parameters > LARGE_MODEL_PARAMETERS


SettingCheck = Callable[[Any, ModelFacts], "str | None"]
SETTING_CHECKS: Registry[SettingCheck] = Registry("settings check")


def bf16_unmovable(weights: torch.Tensor, step: float) -> int:
    """How many bf16 ``weights`` a change of ``step`` in either direction rounds back to the same value."""
    w = weights.float()
    up, down = (w + step).to(torch.bfloat16), (w - step).to(torch.bfloat16)
    return int(((up == weights) & (down == weights)).sum())


def model_facts(recipe, model: torch.nn.Module, tokenizer=None) -> ModelFacts:
    """Count ``model``'s parameters (trainable, bf16) and read what the recipe says about where it came from."""
    total = trainable = bf16 = 0
    frozen: int | None = None
    for p in model.parameters():
        n = p.numel()
        total += n
        if not p.requires_grad:
            continue
        trainable += n
        if p.dtype == torch.bfloat16:
            bf16 += n
            if p.device.type != "meta":
                frozen = (frozen or 0) + bf16_unmovable(p.detach(), recipe.train.lr)
    template = bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else False
    return ModelFacts(total, trainable, bf16, frozen, recipe.model.path is not None, template)


def _millions(n: int) -> str:
    return f"{n / 1e6:.0f}M"


@SETTING_CHECKS.register("lr")
def _lr(recipe, facts: ModelFacts) -> str | None:
    lr = recipe.train.lr
    if not (facts.pretrained and facts.large and recipe.model.lora is None and lr >= FULL_FINETUNE_MAX_LR):
        return None
    return (f"train.lr={lr:g} is a setting for a tiny model trained from scratch: full fine-tuning of this {_millions(facts.parameters)}-parameter "
            f"pretrained model at lr >= {FULL_FINETUNE_MAX_LR:g} can wreck it in a step or two; use about 1e-5 for sft, 1e-6 to 5e-6 for dpo/kto "
            f"and 1e-6 for rl (recipes/real/), or model.lora")


@SETTING_CHECKS.register("max_length")
def _max_length(recipe, facts: ModelFacts) -> str | None:
    n = recipe.data.max_length
    if not (facts.pretrained and facts.large and facts.chat_template and n < CHAT_MIN_MAX_LENGTH):
        return None
    return (f"data.max_length={n} is short for a chat model: its template's role tokens and system prompt take tens of tokens before any "
            f"content, so chat rows overflow (data.truncation decides: refused, cut or skipped); use {CHAT_MIN_MAX_LENGTH} or more (recipes/real/ use 512)")


@SETTING_CHECKS.register("dpo_beta")
def _dpo_beta(recipe, facts: ModelFacts) -> str | None:
    if recipe.algorithm != "dpo" or recipe.dpo.loss != "dpo" or not (facts.pretrained and facts.large) or recipe.dpo.beta < DPO_MAX_BETA:
        return None
    return (f"dpo.beta={recipe.dpo.beta:g} is the tiny demo's setting; for a pretrained {_millions(facts.parameters)}-parameter model the usual "
            f"value is 0.1 (a larger beta holds the policy closer to the reference, so with a small lr it barely moves)")


@SETTING_CHECKS.register("bf16_weights")
def _bf16_weights(recipe, facts: ModelFacts) -> str | None:
    if not facts.bf16_trainable or recipe.train.precision == "bf16_params":  # there the fp32 masters keep the small updates
        return None
    frozen = ""
    if facts.bf16_frozen_by_lr is not None:
        share = 100.0 * facts.bf16_frozen_by_lr / facts.bf16_trainable
        frozen = f" ({share:.1f}% of the trainable weights here)"
    return (f"the trainable weights are stored in bfloat16 (model.dtype=bfloat16): an update smaller than half a bf16 step rounds away, "
            f"and an Adam step of about lr={recipe.train.lr:g} leaves the weights with |w| above about 256 * lr = {BF16_RESOLUTION_FACTOR * recipe.train.lr:.3g} unchanged{frozen}; "
            f"use train.precision=bf16_params (bf16 weights for compute, fp32 master weights in the optimizer) or model.dtype=float32 with train.precision=bf16 (bf16 autocast)")


def check_settings(recipe, model: torch.nn.Module, tokenizer=None) -> list[str]:
    """One-line warnings for settings of ``recipe`` that do not suit ``model`` (the loaded policy; its
    ``tokenizer`` tells whether chat templates are in play). Empty when nothing looks wrong."""
    facts = model_facts(recipe, model, tokenizer)
    return [w for _, check in SETTING_CHECKS.items() if (w := check(recipe, facts)) is not None]


def warn_settings(recipe, model: torch.nn.Module, tokenizer=None, enabled: bool = True) -> list[str]:
    """:func:`check_settings`, each warning printed as one ``[alignkit] warning: ...`` line; nothing is checked
    where ``enabled`` is false (e.g. on processes other than the main one, or on a trainer's later fits)."""
    if not enabled:
        return []
    warnings = check_settings(recipe, model, tokenizer)
    for warning in warnings:
        say(f"warning: {warning}")
    return warnings

"""Value-guided decoding: a prefix value ``V(x, y_<=t)`` trained on rollouts steers the base model token by token.

* **CD-FUDGE** (Mudgal et al. 2024, "Controlled Decoding from Language Models"; Yang & Klein 2021, FUDGE): the
  value of every prefix of a base-model rollout is regressed on the rollout's final reward (Monte Carlo,
  ``lam = 1``).
* **VAS** (Han et al. 2024, "Value Augmented Sampling"): the value is fitted with TD(lambda) targets
  ``G_t = (1 - lam) V(s_t+1) + lam G_t+1`` (``G_T = r``, no discount, the reward at the end) from the current
  value, and several values (one per reward) are composed with weights chosen at run time.
* **Transfer Q*** (Chakraborty et al. 2024): the value is fitted on rollouts of an *aligned baseline* model
  (``fit_from=``) instead of the base model, then guides the base model. *Direct* transfer (``transfer:
  direct``) takes the baseline's rollouts as they are: right when the baseline is the optimum
  ``rho_BL = pi_sft exp(r / beta) / Z`` of the target reward itself. *Indirect* transfer (``transfer: indirect``)
  is for a baseline aligned to another reward ``r_BL`` (``rho_BL = pi_sft exp(r_BL / beta) / Z_BL``): the
  target's optimum is ``pi* = rho_BL exp((r - r_BL) / beta) Z_BL / Z``, so a rollout ``y ~ rho_BL`` of prompt
  ``x`` is weighted by ``pi*(y|x) / rho_BL(y|x) ∝ exp(r(x, y) / beta) pi_sft(y|x) / rho_BL(y|x)`` (``r_BL`` is the
  baseline's implicit reward ``beta log rho_BL / pi_sft``, never needed itself), self-normalised over the
  prompt's rollouts (mean 1), and the value regression is weighted by it. Every prefix of a rollout takes the
  rollout's weight: exact for the prompt's first-token values, an approximation deeper in (a prefix's exact
  weight would be its suffix's ratio, normalised per prefix state).

Decoding (all three): over the base model's top-``k`` next tokens ``v``,
``score(v) = logit(v) + w * sum_i c_i V_i(x, y_<t v)``, ``-inf`` elsewhere; sampled (or greedy) from the
scores. Each value model keeps its own KV cache in lockstep: at every step its cache is forked ``k`` times,
advanced with the ``k`` candidates in one forward (``rows * k`` tokens), and the fork of the sampled token
is kept at the next step (:meth:`~alignkit.rollout.local.DecodeState.fork` / ``select``); the prefix is
never run again.

A :class:`ValueModel` is a causal-LM body (by default a copy of the base model's decoder) with a linear head
``V`` at every position; saved as a folder (the body's ``save_pretrained``, ``value_head.safetensors``,
``value.json``).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch
from torch import nn

from ..rollout.engine import left_pad
from ..rollout.local import DecodeState, Guide, StepState, _cache_argument, prefill
from .base import STRATEGIES, Context, Decoding
from .guided import as_list, check_backend, run_guided

HEAD_FILE, META_FILE = "value_head.safetensors", "value.json"
TRANSFERS = ("direct", "indirect")


class ValueModel(nn.Module):
    """``V`` of every prefix: a decoder body and a linear head. ``forward`` takes the decode loop's arguments
    and returns ``.logits`` of shape ``[rows, positions, 1]`` (the values), so a :class:`DecodeState` carries it
    like any model."""

    def __init__(self, body: nn.Module, meta: dict[str, Any] | None = None):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.meta = dict(meta or {})

    @property
    def config(self):
        return self.body.config

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False, logits_to_keep=0, **kwargs):
        cache = {_cache_argument(type(self.body)): past_key_values} if past_key_values is not None else {}
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache, **cache).last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return SimpleNamespace(logits=self.head(hidden.to(self.head.weight.dtype)))

    def values(self, input_ids, attention_mask) -> torch.Tensor:
        """``[rows, positions]`` values of left-padded sequences (no cache)."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits[..., 0]

    def save_pretrained(self, path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.body.save_pretrained(path)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(path / HEAD_FILE))
        (path / META_FILE).write_text(json.dumps({"kind": "value", **self.meta}, indent=1, default=str))
        return path

    @classmethod
    def from_pretrained(cls, path) -> "ValueModel":
        from safetensors.torch import load_file
        from transformers import AutoModel

        path = Path(path)
        if not (path / META_FILE).exists():
            raise ValueError(f"{path} is not a value model folder (no {META_FILE}); fit one with value=fit save=PATH")
        model = cls(AutoModel.from_pretrained(str(path), dtype=torch.float32), json.loads((path / META_FILE).read_text()))
        model.head.load_state_dict(load_file(str(path / HEAD_FILE)))
        return model.eval()


def td_lambda_targets(values: torch.Tensor, reward: float, lam: float) -> torch.Tensor:
    """TD(lambda) targets of one rollout's prefix values ``[T + 1]`` (``values[j]``: V after ``j`` completion
    tokens; the last is the finished text) with the reward ``reward`` at the end and no discount:
    ``G_T = r``, ``G_j = (1 - lam) values[j + 1] + lam G_j+1``. ``lam = 1``: every target is ``r`` (Monte Carlo)."""
    out = torch.empty_like(values)
    out[-1] = reward
    for j in range(values.shape[0] - 2, -1, -1):
        out[j] = (1 - lam) * values[j + 1] + lam * out[j + 1]
    return out


@dataclass
class Rollouts:
    """Token sequences (prompt + completion) with the completion length and the final reward of each."""

    seqs: list[list[int]]
    lengths: list[int]
    rewards: list[float]


def importance_weights(rewards: Sequence[float], logp_base: Sequence[float], logp_baseline: Sequence[float], group: int,
                       beta: float) -> list[float]:
    """Transfer Q*'s indirect-transfer weights of rollouts ``y_i ~ rho_BL`` (consecutive groups of ``group`` per
    prompt): ``w_i ∝ exp(r_i / beta + log pi_sft(y_i|x) - log rho_BL(y_i|x))``, normalised to mean 1 in each group
    (self-normalised importance sampling toward ``pi* ∝ pi_sft exp(r / beta)``)."""
    if beta <= 0:
        raise ValueError(f"value_guided: transfer_beta must be > 0 (got {beta})")
    n = len(rewards)
    if not (len(logp_base) == len(logp_baseline) == n) or group < 1 or n % group:
        raise ValueError(f"importance weights: {n} rewards, {len(logp_base)} / {len(logp_baseline)} log-probs, groups of {group}")
    logits = torch.tensor(rewards, dtype=torch.float64) / beta + torch.tensor(logp_base, dtype=torch.float64) - torch.tensor(logp_baseline, dtype=torch.float64)
    w = torch.softmax(logits.view(-1, group), -1) * group
    return w.view(-1).tolist()


@torch.no_grad()
def completion_logps(model, rollouts: Rollouts, pad_id: int, batch_size: int = 32) -> list[float]:
    """``sum_t log model(y_t | x, y_<t)`` over each rollout's completion tokens (temperature 1)."""
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(rollouts.seqs), batch_size):
        seqs, lengths = rollouts.seqs[start : start + batch_size], rollouts.lengths[start : start + batch_size]
        ids, attention = left_pad(seqs, pad_id)
        ids, attention = ids.to(device), attention.to(device)
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=attention, position_ids=position_ids).logits.float(), -1)
        token = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # position j predicts token j + 1
        width = ids.shape[1]
        out += [float(token[row, width - n - 1 :].sum()) if n else 0.0 for row, n in enumerate(lengths)]
    return out


def fit_value(value: ValueModel, rollouts: Rollouts, pad_id: int, lam: float = 1.0, epochs: int = 4, lr: float = 1e-3, batch_size: int = 32,
              seed: int = 0, weights: Sequence[float] | None = None) -> list[float]:
    """Regress ``value`` on the TD(lambda) targets of ``rollouts`` (recomputed from the current value every
    epoch; ``lam = 1`` is CD-FUDGE's Monte Carlo regression) over the prefixes from the prompt's last token to the
    end of the completion; ``weights`` (one per rollout, e.g. :func:`importance_weights`) weight each rollout's
    squared errors. Returns the (weighted) mean squared error of every epoch."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"value fit: lam must be in [0, 1] (got {lam})")
    if weights is not None and len(weights) != len(rollouts.seqs):
        raise ValueError(f"value fit: {len(rollouts.seqs)} rollouts but {len(weights)} weights")
    device = next(value.parameters()).device
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(value.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(rollouts.seqs), generator=g).tolist()
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, attention = left_pad([rollouts.seqs[i] for i in idx], pad_id)
            ids, attention = ids.to(device), attention.to(device)
            value.train()
            pred = value.values(ids, attention)
            width = ids.shape[1]
            mask = torch.zeros_like(pred)
            target = torch.zeros_like(pred)
            with torch.no_grad():
                for row, i in enumerate(idx):
                    first = width - rollouts.lengths[i] - 1  # the prompt's last token: V(x)
                    target[row, first:] = td_lambda_targets(pred[row, first:].detach(), rollouts.rewards[i], lam)
                    mask[row, first:] = 1.0 if weights is None else float(weights[i])
            loss = ((pred - target) ** 2 * mask).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        losses.append(total / max(count, 1))
    value.eval()
    return losses


class ValueGuide(Guide):
    """``logit(v) + w * sum_i c_i V_i(prefix + v)`` on each row's top-``k`` tokens, ``-inf`` elsewhere; every value
    model's cache forked over the ``k`` candidates and the sampled one kept (see the module docstring)."""

    def __init__(self, values: Sequence[ValueModel], coefs: Sequence[float], k: int, w: float, pad_id: int = 0):
        if k < 1:
            raise ValueError(f"value-guided decoding: k must be >= 1 (got {k})")
        self.values, self.coefs, self.k, self.w, self.pad_id = list(values), [float(c) for c in coefs], int(k), float(w), pad_id
        self.states: list[DecodeState] = []
        self.top: torch.Tensor | None = None  # [rows, k] candidates of the previous step

    def prefill(self, state: StepState) -> None:
        self.states = [prefill(v, state.prompt_ids, self.pad_id) for v in self.values]

    def select(self, indices: torch.Tensor) -> None:
        k = self.top.shape[1]
        forks = (indices.to(self.top.device)[:, None] * k + torch.arange(k, device=self.top.device)).reshape(-1)
        for s in self.states:
            s.select(forks)
        self.top = self.top[indices.to(self.top.device)]

    def _keep_sampled(self, last_tokens: torch.Tensor) -> None:
        k = self.top.shape[1]
        j = (self.top == last_tokens[:, None].to(self.top.device)).int().argmax(-1)
        rows = torch.arange(self.top.shape[0], device=self.top.device) * k + j
        for s in self.states:
            s.select(rows)

    def __call__(self, logits: torch.Tensor, state: StepState) -> torch.Tensor:
        if state.last_tokens is not None:
            self._keep_sampled(state.last_tokens)
        k = min(self.k, logits.shape[-1])
        scores, top = logits.float().topk(k, dim=-1)
        flat = top.reshape(-1)
        for model, s, c in zip(self.values, self.states, self.coefs):
            s.fork(k)
            v = s.advance(model, flat.to(s.attention.device))[:, 0].float().view(-1, k)
            scores = scores + self.w * c * v.to(scores.device)
        self.top = top
        return torch.full_like(logits, float("-inf"), dtype=torch.float32).scatter(-1, top, scores).to(logits.dtype)

    def finish(self) -> None:
        self.states, self.top = [], None


def base_rollouts(model, tokenizer, prompts: Sequence[Any], reward_source, samples: int, max_new_tokens: int, seed: int,
                  batch_size: int = 64) -> Rollouts:
    """``samples`` completions per prompt from ``model`` (temperature 1) with their rewards."""
    from ..rollout.generate import generate

    out = generate(model, tokenizer, list(prompts), n=samples, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    r = reward_source.score([s.prompt for s in out], [s.completion for s in out]).float().tolist()
    return Rollouts([list(s.prompt_ids) + list(s.completion_ids) for s in out], [len(s.completion_ids) for s in out], r)


def new_value_model(body_from, meta: dict[str, Any] | None = None) -> ValueModel:
    """A fresh :class:`ValueModel` whose body is a copy of ``body_from``'s decoder (a causal LM object, or a
    model folder loaded for the purpose), its head zero (V = 0 everywhere at the start)."""
    if isinstance(body_from, (str, Path)):
        from ..models.loading import load_policy_for_inference

        body_from = load_policy_for_inference(body_from)
    decoder = body_from.get_decoder() if hasattr(body_from, "get_decoder") else body_from
    body = copy.deepcopy(decoder).float()
    for p in body.parameters():
        p.requires_grad_(True)
    return ValueModel(body, meta)


def fit_on_rollouts(ctx: Context, reward, lam: float, fit_from=None, fit_prompts: int = 64, fit_samples: int = 4, fit_epochs: int = 12,
                    value_init=None, task: str = "sentiment", save=None, fit_lr: float = 1e-3, transfer: str = "direct",
                    transfer_beta: float = 1.0) -> tuple[ValueModel, dict[str, Any]]:
    """Fit a value for ``ctx``'s model: rollouts of the base model (or of ``fit_from``, Transfer Q*) on
    ``fit_prompts`` train prompts of ``task``, ``fit_samples`` each, scored by ``reward``; TD(``lam``) regression,
    weighted by :func:`importance_weights` (``transfer_beta``) with ``transfer: indirect``.
    Its cost is reported apart (``stats['fit']``), not as the decoding's."""
    from ..rewards.sources import build_reward_source
    from ..tasks import get_task

    began = time.perf_counter()
    sampler = ctx.model
    source = "base" if fit_from is None else str(fit_from) if isinstance(fit_from, (str, Path)) else type(fit_from).__name__
    if fit_from is not None:
        from ..models.loading import load_policy_for_inference

        sampler = load_policy_for_inference(fit_from) if isinstance(fit_from, (str, Path)) else fit_from
    prompts = get_task(task).prompts(fit_prompts, "train")
    before = (ctx.cost.tokens_generated, dict(ctx.cost.forwards), dict(ctx.cost.tokens_processed))
    with torch.enable_grad():
        data = base_rollouts(sampler, ctx.tokenizer, prompts, build_reward_source(reward), fit_samples, ctx.sampling.max_new_tokens,
                             seed=(ctx.sampling.seed or 0) + 7777, batch_size=ctx.batch_size)
        value = new_value_model(value_init if value_init is not None else ctx.model,
                                {"lam": lam, "reward": str(reward), "fit_from": source, "transfer": transfer})
        weights = None
        if transfer == "indirect":
            weights = importance_weights(data.rewards, completion_logps(ctx.model, data, ctx.pad_id, ctx.batch_size),
                                         completion_logps(sampler, data, ctx.pad_id, ctx.batch_size), fit_samples, transfer_beta)
        losses = fit_value(value, data, ctx.pad_id, lam=lam, epochs=fit_epochs, lr=fit_lr, weights=weights)
    ctx.cost.tokens_generated, ctx.cost.forwards, ctx.cost.tokens_processed = before
    if save is not None:
        value.save_pretrained(save)
    ctx.cost.estimate_s += time.perf_counter() - began  # reported apart from the decoding's wall time
    stats = {"rollouts": len(data.seqs), "reward_mean": sum(data.rewards) / len(data.rewards), "mse": losses, "seconds": time.perf_counter() - began,
             "lam": lam, "fit_from": source, "transfer": transfer}
    if weights is not None:
        ess = [sum(weights[i : i + fit_samples]) ** 2 / sum(x * x for x in weights[i : i + fit_samples]) for i in range(0, len(weights), fit_samples)]
        stats.update(transfer_beta=transfer_beta, ess_per_prompt=sum(ess) / len(ess), weight_max=max(weights))
    return value, stats


@STRATEGIES.register("value_guided", family="value-guided decoding", paper="Mudgal et al. 2024 (CD-FUDGE); Han et al. 2024 (VAS); Chakraborty et al. 2024 (Transfer Q*)")
def value_guided(ctx: Context, value="fit", weights=1.0, k: int = 10, w: float = 1.0, reward="gold", lam: float = 1.0, fit_from=None,
                 fit_prompts: int = 64, fit_samples: int = 4, fit_epochs: int = 12, fit_lr: float = 1e-3, value_init=None, task: str = "sentiment",
                 save=None, transfer: str = "direct", transfer_beta: float = 1.0) -> Decoding:
    """Top-``k`` tokens scored by ``logit + w * sum_i c_i V_i(prefix + token)``. ``value``: a value folder (or a
    list, with one weight ``c_i`` each in ``weights``), a :class:`ValueModel`, or ``fit``: fit one now on rollouts
    (of the base model, or of ``fit_from`` for Transfer Q*) scored by ``reward`` with TD(``lam``) targets
    (``lam = 1``: CD-FUDGE; ``lam < 1``: VAS), saved to ``save`` if given. ``transfer: indirect`` (with
    ``fit_from``, a baseline aligned to another reward): Transfer Q*'s importance-weighted fit toward
    ``pi_sft exp(reward / transfer_beta)``."""
    check_backend(ctx, "value_guided")
    if transfer not in TRANSFERS:
        raise ValueError(f"value_guided: transfer must be one of {', '.join(TRANSFERS)} (got {transfer!r})")
    if transfer == "indirect" and (fit_from is None or value != "fit"):
        raise ValueError("value_guided: transfer=indirect needs value=fit and fit_from=BASELINE (the aligned baseline model whose rollouts are reweighted)")
    stats: dict[str, Any] = {"k": k, "w": w}
    if isinstance(value, str) and value == "fit":
        model, stats["fit"] = fit_on_rollouts(ctx, reward, lam, fit_from, fit_prompts, fit_samples, fit_epochs, value_init, task, save, fit_lr,
                                              transfer, transfer_beta)
        models = [model]
    else:
        models = [v if isinstance(v, ValueModel) else ValueModel.from_pretrained(v) for v in as_list(value, "value", "value_guided")]
    coefs = [float(c) for c in as_list(weights, "weights", "value_guided")]
    if len(coefs) == 1:
        coefs = coefs * len(models)
    if len(coefs) != len(models):
        raise ValueError(f"value_guided: {len(models)} values but {len(coefs)} weights")
    device = next(ctx.model.parameters()).device
    for i, m in enumerate(models):
        m.to(device).eval()
        ctx.counter.watch(m, f"value{i}" if len(models) > 1 else "value")
    result = run_guided(ctx, lambda prompts: ValueGuide(models, coefs, k, w, ctx.pad_id))
    result.stats = {**stats, "weights": coefs}
    return result

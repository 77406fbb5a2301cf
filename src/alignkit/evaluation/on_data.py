"""Evaluating a model on the user's own data: :func:`evaluate_on_data` (``alignkit eval MODEL --data FILE``).

What is measured depends on what the data holds (one registered metric per record kind, :data:`DATA_METRICS`)
and on whether a reference model and a reward source are given:

* **pairs** (``prompt``, ``chosen``, ``rejected``): the implicit reward ``r(y) = β (log π(y|x) − log π_ref(y|x))``
  (summed completion log-probs, the trainer's convention) gives ``implicit_reward_accuracy`` = mean over pairs
  of [r(chosen) > r(rejected)] (ties ½) and ``implicit_reward_margin`` = mean r(chosen) − r(rejected) (± s.e.);
  without a reference only the likelihood metrics: ``logp_accuracy`` = mean [log π(chosen) > log π(rejected)]
  (ties ½), ``logp_per_token_accuracy`` (each divided by its token count), ``chosen_logp``, ``rejected_logp``,
  and ``reference_logp_accuracy`` (the same for the reference).
* **unpaired** (``prompt``, ``completion``, ``label``): ``implicit_reward_accuracy`` = mean [r(y) > 0] == label
  (r = 0 counts ½), the mean implicit reward of the desirable and of the undesirable rows, and their difference
  as ``implicit_reward_margin``.
* **sft** (``prompt`` + ``completion``, or ``messages``): ``completion_logp_per_token`` under the model (and the
  reference): how well the model fits the data's completions.
* **with a reward source** (``reward=``: anything ``rl.reward`` takes: ``module:function``, a reward-model folder,
  ``gold[:task]``, a mapping): ``samples_per_prompt`` samples (temperature 1, seeded) on each of the data's first
  ``n_prompts`` distinct prompts from the model and from the reference (seed + 1000): ``model_reward`` and
  ``reference_reward`` (mean ± s.e.), ``win_rate`` = mean over paired samples of [r(model) > r(reference)] (ties ½),
  and the KL estimates ``kl_k1`` (mean log π − log π_ref over the model's samples) and ``kl_k3``
  (:func:`~alignkit.evaluation.metrics.kl_estimates`).

Log-prob metrics encode rows exactly as training does (the data layer: plain text raw, messages with the chat
template); sampling renders plain-text prompts with the chat template when the tokenizer has one
(``chat_template``, as :func:`alignkit.rollout.generate.generate`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.registry import Registry
from . import metrics as M

DEFAULT_BETA = 0.1  # DPO's default (dpo.beta)


# --------------------------------------------------------------------------------------------------
# typed results
# --------------------------------------------------------------------------------------------------
@dataclass
class RewardComparison:
    """The reward of the model's samples against the reference's on the data's prompts."""

    reward: str
    prompts: int
    samples_per_prompt: int
    model_reward: float
    model_reward_se: float
    model_length: float
    reference_reward: float | None = None
    reference_reward_se: float | None = None
    reference_length: float | None = None
    win_rate: float | None = None
    kl_k1: float | None = None
    kl_k1_se: float | None = None
    kl_k3: float | None = None
    kl_k3_se: float | None = None


@dataclass
class DataEvaluation:
    """What :func:`evaluate_on_data` measured. ``metrics``: the kind's log-prob metrics (see the module
    docstring); ``rewards``: the sampled comparison when a reward source was given; ``samples``: every sample
    (prompt, completion, its reward, the reference's completion and reward); ``notes``: what could not be
    measured and why."""

    name: str
    data: str
    kind: str
    model: str
    reference: str | None
    rows: int
    metrics: dict[str, Any] = field(default_factory=dict)
    rewards: RewardComparison | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Every scalar result in one flat mapping (the table's rows)."""
        out: dict[str, Any] = {"data": self.data, "kind": self.kind, "rows": self.rows, "model": self.model, "reference": self.reference}
        out.update(self.metrics)
        if self.rewards is not None:
            out.update(asdict(self.rewards))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary(), "notes": list(self.notes), "samples": list(self.samples)}


# --------------------------------------------------------------------------------------------------
# log-probs of given completions
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def sequence_logps(model, sequences: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed target log-probs [N] and target counts [N] of ``(input_ids, loss_mask)`` sequences under
    ``model`` (:class:`~alignkit.models.logprobs.TargetLogProbs`, temperature 1)."""
    from ..data.collate import collate_sequences
    from ..models.logprobs import TargetLogProbs

    module = TargetLogProbs(model)
    device = next(model.parameters()).device
    sums, counts = [], []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        batch = collate_sequences([ids for ids, _ in chunk], [mask for _, mask in chunk], pad_id)
        logps = module(batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["loss_mask"].to(device))
        sums.append(logps.sum(-1).double().cpu())
        counts.append(batch["loss_mask"][:, 1:].sum(-1).double())
    if not sums:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return torch.cat(sums), torch.cat(counts)


@dataclass
class Scorer:
    """The models a kind's metrics read: ``logps(sequences)`` under the model and the reference."""

    model: Any
    reference: Any
    tokenizer: Any
    beta: float
    batch_size: int = 16

    def logps(self, sequences, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logps(self.reference if reference else self.model, sequences, self.tokenizer.pad_token_id, self.batch_size)


def _ties_half(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a > b).double() + 0.5 * (a == b).double()).mean())


# --------------------------------------------------------------------------------------------------
# the metrics of each record kind
# --------------------------------------------------------------------------------------------------
DATA_METRICS: Registry[Callable[..., dict[str, Any]]] = Registry("data evaluation")


@DATA_METRICS.register("pair")
def pair_metrics(examples: list[dict[str, Any]], scorer: Scorer, notes: list[str]) -> dict[str, Any]:
    from ..data.collate import reply_mask  # a trajectory's tool and user turns are not the model's: not scored

    chosen = [(e["prompt_ids"] + e["chosen_ids"], [0] * len(e["prompt_ids"]) + reply_mask(e, "chosen")) for e in examples]
    rejected = [(e["prompt_ids"] + e["rejected_ids"], [0] * len(e["prompt_ids"]) + reply_mask(e, "rejected")) for e in examples]
    lc, nc = scorer.logps(chosen)
    lr, nr = scorer.logps(rejected)
    out: dict[str, Any] = {
        "pairs": len(examples),
        "logp_accuracy": _ties_half(lc, lr),
        "logp_per_token_accuracy": _ties_half(lc / nc.clamp(min=1), lr / nr.clamp(min=1)),
        "chosen_logp": float(lc.mean()),
        "rejected_logp": float(lr.mean()),
    }
    if scorer.reference is None:
        notes.append("implicit-reward metrics need a reference model: give --reference (reference= in Python)")
        return out
    rc, rr = scorer.logps(chosen, reference=True)[0], scorer.logps(rejected, reference=True)[0]
    margin = scorer.beta * ((lc - rc) - (lr - rr))
    out["beta"] = scorer.beta
    out["implicit_reward_accuracy"] = M.implicit_reward_accuracy(lc, lr, rc, rr, scorer.beta)
    out["implicit_reward_margin"], out["implicit_reward_margin_se"] = M.mean_and_se(margin)
    out["reference_logp_accuracy"] = _ties_half(rc, rr)
    return out


@DATA_METRICS.register("unpaired")
def unpaired_metrics(examples: list[dict[str, Any]], scorer: Scorer, notes: list[str]) -> dict[str, Any]:
    labels = torch.tensor([bool(e["label"]) for e in examples])
    sequences = [(e["input_ids"], e["loss_mask"]) for e in examples]
    lp, n = scorer.logps(sequences)
    out: dict[str, Any] = {"desirable": int(labels.sum()), "undesirable": int((~labels).sum()),
                           "completion_logp_per_token": float((lp / n.clamp(min=1)).mean())}
    if scorer.reference is None:
        notes.append("implicit-reward metrics need a reference model: give --reference (reference= in Python)")
        return out
    r = scorer.beta * (lp - scorer.logps(sequences, reference=True)[0])
    right = torch.where(labels, (r > 0).double(), (r < 0).double()) + 0.5 * (r == 0).double()
    good = float(r[labels].mean()) if labels.any() else math.nan
    bad = float(r[~labels].mean()) if (~labels).any() else math.nan
    out.update(beta=scorer.beta, implicit_reward_accuracy=float(right.mean()), desirable_implicit_reward=good,
               undesirable_implicit_reward=bad, implicit_reward_margin=good - bad)
    return out


@DATA_METRICS.register("sft")
def sft_metrics(examples: list[dict[str, Any]], scorer: Scorer, notes: list[str]) -> dict[str, Any]:
    sequences = [(e["input_ids"], e["loss_mask"]) for e in examples]
    lp, n = scorer.logps(sequences)
    out: dict[str, Any] = {"completion_logp_per_token": float(lp.sum() / n.sum().clamp(min=1))}
    if scorer.reference is not None:
        rp, _ = scorer.logps(sequences, reference=True)
        out["reference_completion_logp_per_token"] = float(rp.sum() / n.sum().clamp(min=1))
    return out


# --------------------------------------------------------------------------------------------------
# prompts and reward-scored samples
# --------------------------------------------------------------------------------------------------
def record_prompt(record: dict[str, Any]) -> Any:
    """The prompt of a checked record: its ``prompt``, or a conversation's turns before its last assistant turn."""
    if "prompt" in record:
        return record["prompt"]
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def _context(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Each record's extra fields (a prompt row's top-level extras, another kind's ``meta``): reward functions get them as keyword lists."""
    if kind == "prompt":
        return [{k: v for k, v in r.items() if k not in ("prompt", "_row")} for r in records]
    return [dict(r.get("meta") or {}) for r in records]


def compare_rewards(model, reference, tokenizer, prompts: list[Any], contexts: list[dict[str, Any]], source, spec: str, samples_per_prompt: int = 1,
                    max_new_tokens: int = 64, seed: int = 0, chat_template: bool | str = "auto",
                    batch_size: int = 64) -> tuple[RewardComparison, list[dict[str, Any]]]:
    """Samples of the model (seed) and of the reference (seed + 1000) on ``prompts``, scored by ``source``
    (keyword context: the fields every context holds, one value per sample); the KL estimates on the model's
    samples. Returns the comparison and one row per model sample."""
    from ..rollout.generate import generate, sample_logprobs

    k = samples_per_prompt
    shared = set.intersection(*(set(c) for c in contexts)) if contexts else set()
    context = {key: [c[key] for c in contexts for _ in range(k)] for key in sorted(shared)}
    repeated = [p for p in prompts for _ in range(k)]

    def draw(policy, draw_seed):
        samples = generate(policy, tokenizer, prompts, n=k, max_new_tokens=max_new_tokens, seed=draw_seed, batch_size=batch_size,
                           chat_template=chat_template)
        scores = source.score(repeated, [s.completion for s in samples], **context)
        return samples, [float(x) for x in torch.as_tensor(scores).flatten().tolist()]

    ours, our_rewards = draw(model, seed)
    mean, se = M.mean_and_se(our_rewards)
    result = RewardComparison(spec, len(prompts), k, mean, se, M.mean_and_se([len(s.completion_ids) for s in ours])[0])
    rows = [{"prompt": p, "completion": s.completion, "reward": r} for p, s, r in zip(repeated, ours, our_rewards)]
    if reference is not None:
        theirs, their_rewards = draw(reference, seed + 1000)
        result.reference_reward, result.reference_reward_se = M.mean_and_se(their_rewards)
        result.reference_length = M.mean_and_se([len(s.completion_ids) for s in theirs])[0]
        result.win_rate = M.win_rate(our_rewards, their_rewards)
        pad = tokenizer.pad_token_id
        kl = M.kl_estimates(sample_logprobs(model, ours, pad), sample_logprobs(reference, ours, pad))
        result.kl_k1, result.kl_k1_se, result.kl_k3, result.kl_k3_se = kl["kl_k1"], kl["kl_k1_se"], kl["kl_k3"], kl["kl_k3_se"]
        for row, s, r in zip(rows, theirs, their_rewards):
            row.update(reference_completion=s.completion, reference_reward=r)
    return result, rows


def _distinct(prompts: list[Any], contexts: list[dict[str, Any]], limit: int) -> tuple[list[Any], list[dict[str, Any]]]:
    """The first ``limit`` distinct prompts (in data order) and the context of each one's first row."""
    import json

    seen: dict[str, int] = {}
    for i, p in enumerate(prompts):
        key = json.dumps(p, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen[key] = i
        if len(seen) == limit:
            break
    order = list(seen.values())
    return [prompts[i] for i in order], [contexts[i] for i in order]


# --------------------------------------------------------------------------------------------------
# the front door
# --------------------------------------------------------------------------------------------------
def _load(model):
    from ..models.loading import load_policy_for_inference

    return load_policy_for_inference(model) if isinstance(model, (str, Path)) else model


def _kind_of(record: dict[str, Any]) -> str:
    """The record kind of a checked record (``data.kind: auto`` inferred it from the converted first row;
    a checked record keeps the kind's fields, its metadata aside)."""
    from ..data.kinds import infer_kind

    return infer_kind({k: v for k, v in record.items() if k not in ("meta", "_row")})


def evaluate_on_data(
    model,
    data,
    reference=None,
    reward=None,
    tokenizer=None,
    beta: float | None = None,
    n_prompts: int = 64,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 64,
    seed: int = 0,
    max_rows: int | None = None,
    chat_template: bool | str = "auto",
    batch_size: int = 16,
    name: str | None = None,
    kind: str = "auto",
) -> DataEvaluation:
    """Evaluate ``model`` (a model or run folder, or a loaded model with ``tokenizer``) on ``data`` (a file any
    ``data.train`` takes, or a list of row dicts). ``reference``: a folder or a loaded model (default, for a run
    folder: the run's starting model; otherwise none, and the implicit-reward metrics are left out with a note).
    ``reward``: a reward source spec (``module:function``, a reward-model folder, ``gold``, a mapping) or a
    :class:`~alignkit.rewards.RewardSource`; with it the model's and the reference's samples on the data's
    first ``n_prompts`` distinct prompts are compared. ``beta``: of the implicit reward (default: the run's
    ``dpo.beta``, else 0.1). ``max_rows``: evaluate only the first rows. ``kind``: the data's record kind (default:
    inferred as ``data.kind: auto`` infers it). See the module docstring for the metrics."""
    from ..data.encode import Encoder
    from ..data.records import load_records
    from ..models.loading import load_tokenizer
    from ..rewards import build_reward_source, check_reward_spec
    from .targets import resolve_target

    notes: list[str] = []
    target = None
    if isinstance(model, (str, Path)):
        target = resolve_target(model)
        if not (target.model_dir / "config.json").exists() and not (target.model_dir / "adapter_config.json").exists():
            raise ValueError(f"{target.model_dir}: not a model folder (no config.json) nor a run folder with final/")
        if reference is None and target.reference is not None:
            reference = target.reference
        if beta is None:
            beta = target.beta
        tokenizer = tokenizer or load_tokenizer(target.model_dir)
    elif tokenizer is None:
        raise ValueError("evaluate_on_data: give tokenizer= with a loaded model")
    beta = DEFAULT_BETA if beta is None else float(beta)
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (got {beta})")
    spec = reward
    if reward is not None:
        check_reward_spec(reward, "--reward")
    records, _ = load_records(data, kind=kind)
    kind = _kind_of(records[0]) if kind == "auto" else kind
    if max_rows is not None:
        records = records[:max_rows]
    source_name = str(data) if isinstance(data, (str, Path)) else "<rows>"
    policy = _load(target.model_dir if target is not None else model)
    ref_model = _load(reference) if reference is not None else None
    result = DataEvaluation(name or (Path(data).stem if isinstance(data, (str, Path)) else "data"), source_name, kind,
                            str(target.model_dir) if target is not None else type(model).__name__,
                            str(reference) if isinstance(reference, (str, Path)) else (type(reference).__name__ if reference is not None else None),
                            len(records), notes=notes)
    if kind in DATA_METRICS:
        encoder = Encoder(tokenizer, max_length=10**9, source=source_name)
        examples = [encoder.encode(r, kind) for r in records]
        result.metrics = DATA_METRICS.get(kind)(examples, Scorer(policy, ref_model, tokenizer, beta, batch_size), notes)
    elif reward is None:
        notes.append(f"{kind} rows carry no completions to score: give --reward SPEC to compare samples on their prompts")
    if reward is not None:
        source = build_reward_source(reward)
        prompts, contexts = _distinct([record_prompt(r) for r in records], _context(records, kind), n_prompts)
        if ref_model is None:
            notes.append("win rate and KL need a reference model: give --reference (reference= in Python)")
        label = spec if isinstance(spec, str) else type(source).__name__ if not isinstance(spec, dict) else str(spec)
        result.rewards, result.samples = compare_rewards(policy, ref_model, tokenizer, prompts, contexts, source, label, samples_per_prompt,
                                                         max_new_tokens, seed, chat_template)
    return result


# --------------------------------------------------------------------------------------------------
# output: a table, eval-<name>.json, the samples, a report
# --------------------------------------------------------------------------------------------------
def format_table(result: DataEvaluation) -> str:
    """The plain-text table ``alignkit eval --data`` prints: metric, value, what it means."""
    from .glossary import explain

    rows = [(k, v) for k, v in result.summary().items() if v is not None]
    width = max(len(k) for k, _ in rows)

    def show(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    values = [show(v) for _, v in rows]
    vwidth = min(max(len(v) for v in values), 40)
    lines = [f"{'metric'.ljust(width)}  {'value'.ljust(vwidth)}  meaning", "-" * (width + vwidth + 60)]
    lines += [f"{k.ljust(width)}  {v.ljust(vwidth)}  {explain(k) or ''}" for (k, _), v in zip(rows, values)]
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def write_data_eval(result: DataEvaluation, folder: str | Path, keep_samples: int = 8) -> dict[str, Path]:
    """``eval-<name>.json`` (every metric, the notes and the first ``keep_samples`` samples),
    ``eval-<name>-samples.jsonl`` (every sample, when a reward source was given) and ``eval-<name>.html``
    (the report) in ``folder``. Returns their paths by role."""
    import json

    from .report import write_report

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"eval-{result.name}.json", "report": folder / f"eval-{result.name}.html"}
    data = result.as_dict()
    data["samples"] = result.samples[:keep_samples]
    paths["json"].write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    if result.samples:
        paths["samples"] = folder / f"eval-{result.name}-samples.jsonl"
        paths["samples"].write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in result.samples), encoding="utf-8")
    blocks: list[tuple[str, Any]] = [("Evaluation on " + result.data, result.summary())]
    if result.notes:
        blocks.append(("Notes", " ".join(result.notes)))
    if result.samples:
        blocks.append(("Samples", result.samples[:keep_samples]))
    write_report(folder, f"alignkit eval: {result.model} on {result.data}", blocks, filename=paths["report"].name)
    return paths

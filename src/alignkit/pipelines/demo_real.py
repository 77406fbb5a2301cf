"""The real-model demo (``alignkit demo --real``, ``make demo-real``): controlled sentiment on SmolLM2-135M-Instruct.

In the spirit of the DPO paper's IMDb task, with a human-grounded gold reward and no SFT step:

1. chat prompts that ask for short product reviews (varied products and wordings; the held-out prompts
   review products the training prompts never name), rendered with the model's chat template;
2. two samples per training prompt from the model itself;
3. each pair labelled by a Bradley–Terry draw on the gold reward, VADER's compound sentiment of the review
   (:mod:`alignkit.rewards.vader`): P(a ≻ b) = σ((r_a − r_b) / T);
4. DPO from the model itself (the reference is the starting model, so the loss starts at log 2);
5. on the held-out prompts, before and after: mean gold reward ± s.e., KL(policy ‖ start) on the policy's
   own samples (k1 ± s.e.), length, samples; ``report.html`` and ``results.json`` in the run folder.

Every choice is a field of :class:`RealDemoSettings`; the defaults are the measured ones of
``docs/real-models.md`` (about 10 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..algorithms import train
from ..config import load_recipe
from ..data.records import write_jsonl
from ..engine.tracking import read_metrics
from ..evaluation.policy import evaluate_policy
from ..evaluation.report import plot_curves, plot_frontier, write_report
from ..models.loading import load_policy_for_inference, load_tokenizer
from ..rewards.vader import vader_compound
from ..rollout.generate import generate
from ..tasks import bradley_terry, label_pairs

# Products of the training prompts and, disjoint from them, of the held-out prompts.
TRAIN_PRODUCTS = (
    "a pair of running shoes", "a cordless drill", "a budget smartphone", "a coffee grinder", "a rain jacket",
    "a paperback cookbook", "a desk lamp", "a pair of wireless earbuds", "a camping tent", "a electric kettle",
    "a yoga mat", "a mechanical keyboard", "a kitchen knife", "a board game", "a backpack", "a robot vacuum",
    "a wool sweater", "a bicycle helmet", "a blender", "a set of bed sheets", "an e-reader", "a garden hose",
    "a travel mug", "a phone case", "a standing desk", "a pair of sunglasses", "a hair dryer", "a fitness tracker",
    "a frying pan", "a portable speaker", "a office chair", "a pack of AA batteries", "a toaster", "a winter coat",
    "a computer mouse", "a scented candle", "a water bottle", "a pair of hiking boots", "a rice cooker", "a novel",
)
EVAL_PRODUCTS = (
    "a microwave oven", "a pair of headphones", "a suitcase", "a tablet", "a pillow", "a pair of jeans",
    "a laptop stand", "a vacuum flask", "a dishwasher", "a wristwatch", "a teapot", "a webcam", "a sleeping bag",
    "a pair of slippers", "a printer", "a skateboard",
)
# Wordings of the request ({} is the product).
REQUESTS = (
    "Write a short review (two or three sentences) of {} you bought recently.",
    "In a few sentences, review {} you have used for a month.",
    "Write a brief customer review of {}.",
    "You bought {} online. Write a short review for the shop's website.",
    "Give a short, honest review of {}.",
    "Write a two-sentence product review of {}.",
)


def review_prompts(n: int, split: str = "train", seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` chat prompts (one user message each) asking for a short review; ``split`` "train" or "test"
    (held-out products). Every (product, wording) combination appears once before any repeats, in an
    order drawn from ``seed``."""
    if split not in ("train", "test"):
        raise ValueError(f"review prompts: split must be 'train' or 'test', got {split!r}")
    products = TRAIN_PRODUCTS if split == "train" else EVAL_PRODUCTS
    combos = [(p, r) for p in products for r in REQUESTS]
    random.Random(f"{seed}-reviews-{split}").shuffle(combos)
    return [[{"role": "user", "content": combos[i % len(combos)][1].format(combos[i % len(combos)][0])}] for i in range(n)]


def prompt_text(prompt: Any) -> str:
    """A chat prompt's user text (for tables); a plain string as it is."""
    if isinstance(prompt, list):
        return " / ".join(str(m.get("content", "")) for m in prompt)
    return str(prompt)


class VaderReviews:
    """The task view :func:`alignkit.evaluation.policy.evaluate_policy` needs: the gold reward of a review is its
    VADER compound score (the prompt is ignored); an empty review counts as malformed."""

    name = "vader-reviews"

    def gold_reward(self, prompt: Any, completion: str) -> float:
        return vader_compound(completion)

    def gold_rewards(self, prompts: list[Any], completions: list[str]) -> list[float]:
        return [vader_compound(c) for c in completions]

    def parse(self, prompt: Any, completion: str) -> str | None:
        return completion if completion.strip() else None


@dataclass
class RealDemoSettings:
    """The demo's knobs (CLI: ``alignkit demo --real``; Python: ``run_real_demo(settings=...)``)."""

    model: str = "models/smollm2"
    train_prompts: int = 96           # prompts sampled for pairs (two samples each)
    eval_prompts: int = 40            # held-out prompts, evaluated before and after
    eval_samples: int = 2             # samples per held-out prompt
    max_new_tokens: int = 48
    temperature: float = 1.0          # sampling the pairs (the evaluation samples at 1.0, where the KL is unbiased)
    label_temperature: float = 0.1    # T of the Bradley–Terry draw on VADER's compound score (in [-1, 1])
    beta: float = 0.1
    lr: float = 2e-5
    batch_size: int = 8
    epochs: float = 2.0
    max_steps: int | None = None
    max_length: int = 512
    seed: int = 0


def settings_from_overrides(overrides: list[str], **values: Any) -> RealDemoSettings:
    """:class:`RealDemoSettings` from ``values`` and ``KEY=VALUE`` strings (values parsed as YAML); an unknown
    key or a value of the wrong type is one ``ValueError`` line naming it."""
    import dataclasses

    import yaml

    fields = {f.name: f for f in dataclasses.fields(RealDemoSettings)}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            hint = "expected KEY=VALUE" if not sep else f"unknown setting {key!r}"
            raise ValueError(f"demo --real --set {item!r}: {hint}; settings: {', '.join(fields)}")
        values[key] = yaml.safe_load(raw)
    for key, value in values.items():
        default = getattr(RealDemoSettings, key, None) if key in fields else None
        kind = type(default) if default is not None else (int if key == "max_steps" else str)
        if value is None and key == "max_steps":
            continue
        if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                values[key] = value = float(value)  # YAML reads 1e-6 (no dot) as a string
            except ValueError:
                pass
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise ValueError(f"demo --real: setting {key}={value!r} must be {'an integer' if kind is int else 'a number' if kind is float else 'a string'}")
    return RealDemoSettings(**values)


def check_demo_inputs(settings: RealDemoSettings) -> None:
    """Before any work: the model folder exists and VADER is installed (each a one-line error naming the fix)."""
    from ..rewards.vader import _analyzer

    if not (Path(settings.model) / "config.json").exists():
        raise FileNotFoundError(f"{settings.model}: no model folder here; make it with alignkit fetch-model smollm2-135m-instruct --out {settings.model} "
                                f"(make demo-real does it), or give another with --model")
    _analyzer()
    if settings.train_prompts < settings.batch_size:
        raise ValueError(f"demo --real: train_prompts ({settings.train_prompts}) must be at least batch_size ({settings.batch_size})")


def label_by_vader(prompts: list[Any], a: list[str], b: list[str], temperature: float, seed: int) -> list[dict]:
    """Preference rows by a Bradley–Terry draw on VADER (:func:`alignkit.tasks.label_pairs`); each row also
    carries ``chosen_vader`` and ``rejected_vader`` (metadata: the trainer keeps it out of the loss)."""

    def reward(prompt: Any, completion: str) -> float:
        return vader_compound(completion)

    rows = label_pairs(prompts, a, b, bradley_terry(reward, temperature), seed=seed, salt="vader")
    for row in rows:
        row["chosen_vader"], row["rejected_vader"] = vader_compound(row["chosen"]), vader_compound(row["rejected"])
    return rows


def sample_review_pairs(model, tokenizer, prompts: list[Any], settings: RealDemoSettings, progress: bool) -> list[dict]:
    """Two samples per prompt from ``model``, pairs with an empty sample left out before labelling."""
    samples = generate(model, tokenizer, prompts, n=2, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                       seed=settings.seed, progress=progress)
    both = [(x, y) for x, y in zip(samples[0::2], samples[1::2]) if x.completion.strip() and y.completion.strip()]
    return label_by_vader([x.prompt for x, _ in both], [x.completion for x, _ in both], [y.completion for _, y in both],
                          settings.label_temperature, settings.seed)


def dpo_recipe(settings: RealDemoSettings, out: Path, pairs_path: Path, progress: bool) -> dict[str, Any]:
    """The DPO run of the demo, as a recipe."""
    train_cfg: dict[str, Any] = {"output_dir": str(out), "lr": settings.lr, "epochs": settings.epochs, "batch_size": settings.batch_size,
                                 "warmup_ratio": 0.1, "log_every": 1, "seed": settings.seed, "progress": progress, "overwrite": True}
    if settings.max_steps is not None:
        train_cfg["max_steps"] = settings.max_steps
    return {"algorithm": "dpo", "model": {"path": settings.model}, "data": {"train": str(pairs_path), "max_length": settings.max_length},
            "dpo": {"loss": "dpo", "beta": settings.beta, "reference": "cache"}, "train": train_cfg}


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[alignkit demo --real] {message}", flush=True)


def _samples_table(evaluation) -> list[dict[str, Any]]:
    return [{"prompt": prompt_text(s["prompt"]), "completion": s["completion"], "vader": round(s["gold_reward"], 4)} for s in evaluation.samples]


def run_real_demo(out_dir: str | Path = "runs/demo-real", settings: RealDemoSettings | None = None, quiet: bool = False,
                  progress: bool = True) -> dict[str, Any]:
    """Run the demo in ``out_dir`` (replaced when it holds an earlier demo run); returns ``results.json``'s content."""
    settings = settings or RealDemoSettings()
    check_demo_inputs(settings)
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bars = progress and not quiet
    task = VaderReviews()
    tokenizer = load_tokenizer(settings.model)
    base = load_policy_for_inference(settings.model)
    timings: dict[str, float] = {}

    _say(f"1/4 sampling 2 reviews for each of {settings.train_prompts} prompts from {settings.model}; Bradley-Terry labels on VADER", quiet)
    t = time.perf_counter()
    pairs = sample_review_pairs(base, tokenizer, review_prompts(settings.train_prompts, "train", settings.seed), settings, bars)
    pairs_path = write_jsonl(out / "pairs.jsonl", pairs)
    timings["sample_pairs"] = time.perf_counter() - t

    _say("2/4 evaluating the starting model on held-out prompts", quiet)
    t = time.perf_counter()
    eval_prompts = review_prompts(settings.eval_prompts, "test", settings.seed)

    def evaluate(name: str, model, reference):
        return evaluate_policy(name, model, tokenizer, task, eval_prompts, reference=reference, n_samples=settings.eval_samples,
                               max_new_tokens=settings.max_new_tokens, seed=settings.seed + 1, keep_samples=12)

    before = evaluate("start", base, None)
    before.kl, before.kl_se = 0.0, 0.0  # the reference itself
    timings["eval_before"] = time.perf_counter() - t

    _say(f"3/4 DPO from the model itself on {len(pairs)} pairs (beta {settings.beta}, lr {settings.lr:g})", quiet)
    t = time.perf_counter()
    dpo_dir = train(load_recipe(dpo_recipe(settings, out / "dpo", pairs_path, bars)))
    timings["dpo"] = time.perf_counter() - t

    _say("4/4 evaluating the DPO model: gold reward (VADER), KL to the starting model", quiet)
    t = time.perf_counter()
    after = evaluate("dpo", load_policy_for_inference(dpo_dir), base)
    timings["eval_after"] = time.perf_counter() - t

    metrics = read_metrics(out / "dpo")
    losses = [r["loss"] for r in metrics if "loss" in r]
    gain = after.gold_reward - before.gold_reward
    summary = [{k: v for k, v in e.as_dict().items() if k not in ("samples", "strategy", "strategy_stats", "cost")} for e in (before, after)]
    seconds = time.perf_counter() - start
    results: dict[str, Any] = {
        "model": settings.model,
        "start_gold_reward": before.gold_reward,
        "start_gold_reward_se": before.gold_reward_se,
        "dpo_gold_reward": after.gold_reward,
        "dpo_gold_reward_se": after.gold_reward_se,
        "gain": gain,
        "dpo_kl_to_start": after.kl,
        "dpo_kl_to_start_se": after.kl_se,
        "pairs": len(pairs),
        "pairs_chosen_vader": sum(r["chosen_vader"] for r in pairs) / max(1, len(pairs)),
        "pairs_rejected_vader": sum(r["rejected_vader"] for r in pairs) / max(1, len(pairs)),
        "dpo_steps": len(losses),
        "dpo_loss_first": losses[0] if losses else None,
        "dpo_loss_last": losses[-1] if losses else None,
        "evaluations": summary,
        "samples": {"start": _samples_table(before), "dpo": _samples_table(after)},
        "settings": asdict(settings),
        "timings": timings,
        "seconds": seconds,
    }
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    curves = plot_curves({"dpo": metrics}, ["loss", "rewards/accuracy", "rewards/margins", "logps/chosen", "logps/rejected"], plots / "dpo_curves.png",
                         "DPO training")
    frontier = plot_frontier({"DPO": [(0.0, before.gold_reward, "start", before.gold_reward_se), (after.kl, after.gold_reward, "DPO", after.gold_reward_se)]},
                             plots / "gold_reward_vs_kl.png", ylabel="mean VADER compound (gold)")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    n_eval = settings.eval_prompts * settings.eval_samples
    blocks: list[tuple[str, Any]] = [
        ("Result", f"Mean VADER compound (gold reward, in [-1, 1]) of {n_eval} reviews for {settings.eval_prompts} held-out prompts: "
         f"start {before.gold_reward:+.3f} ± {before.gold_reward_se:.3f}, after DPO {after.gold_reward:+.3f} ± {after.gold_reward_se:.3f} "
         f"(gain {gain:+.3f}) at KL(DPO ‖ start) = {after.kl:.2f} ± {after.kl_se:.2f} nats per review. "
         f"{len(pairs)} pairs, {len(losses)} DPO steps; run time {seconds:.0f} s."),
        ("Evaluations", summary),
        ("Gold reward vs KL", frontier),
        ("DPO training", curves),
        ("Samples from the starting model", results["samples"]["start"]),
        ("Samples from the DPO model", results["samples"]["dpo"]),
        ("Settings", asdict(settings)),
        ("Time per stage (s)", {k: round(v, 1) for k, v in timings.items()}),
        ("How to reproduce", f"alignkit demo --real --out {out}   (or make demo-real)"),
    ]
    report = write_report(out, f"alignkit demo --real: DPO on {Path(settings.model).name}'s own reviews, VADER gold reward",
                          [(h, c) for h, c in blocks if c is not None])
    results["report"] = str(report)
    _say(f"VADER gold reward: start {before.gold_reward:+.3f} ± {before.gold_reward_se:.3f}, DPO {after.gold_reward:+.3f} ± {after.gold_reward_se:.3f} "
         f"(gain {gain:+.3f}), KL {after.kl:.2f} nats", quiet)
    _say(f"report: {report}  ({seconds:.0f} s)", quiet)
    return results

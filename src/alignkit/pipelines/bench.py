"""Benchmark suites: several algorithms on one task, evaluated on gold reward, KL and more, with figures.

A suite is a YAML file (see ``recipes/bench/``)::

    name: dpo_vs_ppo
    output_dir: runs/bench/dpo_vs_ppo
    task: {name: sentiment}                 # a TaskConfig mapping
    sft: runs/bench/sft/final               # the start/reference model folder, or a recipe mapping
                                            #   (trained once into <output_dir>/sft, reused after)
    eval: {prompts: 128, samples: 2, max_new_tokens: 40, seed: 1}
    pairs: {prompts: 1024, source: policy, label_noise: 0.0, temperature: 0.25}
    reward_models:                          # optional: trained before the methods
      rm: {recipe: {algorithm: reward, ...}, pairs: {prompts: 128, label_noise: 0.2}}
    proxy: rm                               # optional: every point is also scored by this reward source
    methods:
      - name: DPO
        recipe: {algorithm: dpo, dpo: {beta: 0.5}, train: {...}}
        sweep: [{dpo.beta: 0.1}, {dpo.beta: 1.0}]   # one run per entry (dotted overrides)
        checkpoints: true                   # one point per saved checkpoint as well as the final model
        pairs: {label_noise: 0.2}           # per-method changes to the suite's pairs
        x: 0.2                              # optional: a point on a "final gold reward vs x" plot
      - name: best-of-N                     # a policy = model + decoding strategy (docs/decoding.md), no training:
        strategy: best_of_n                 #   evaluated on the same prompts, with its cost/... keys
        options: {reward: gold}
        sweep: [{N: 4}, {N: 16}]            # sweeps override the strategy's options
        model: runs/sft/final               # optional (default: the suite's start model)
      - name: iterative DPO
        type: iterative_dpo                 # rounds of: sample from the current policy, label, DPO
        rounds: 3
        recipe: {algorithm: dpo, ...}

``pairs.source: policy`` samples two completions per prompt from the start model and labels them with the
task's oracle (Bradley–Terry on the gold reward, or the task's own preference), then flips labels with
probability ``label_noise``; ``source: task`` takes the task's base-distribution pairs. In a recipe,
the string ``@name`` stands for the folder of reward model ``name`` (e.g. ``rl: {reward: "@rm"}``, or in an
ensemble spec's ``members``).

Every point is evaluated on held-out prompts: mean gold reward (± s.e.), KL(π‖π_start) (k1 and k3 on
sequence log-probs), win rate against the start model by gold reward or the task's preference oracle,
length, distinct-2, self-BLEU, and the proxy score. Outputs in ``output_dir``: ``points.json``,
``frontier.png`` (gold reward vs KL), ``overoptimisation.png`` (proxy and gold vs KL, when ``proxy`` is set),
``by_x.png`` (when methods have ``x``), ``lengths.png`` and ``report.html``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import yaml

from ..evaluation.policy import ReferenceEvaluator
from .pairs import sample_pairs


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        if value[1:] not in names:
            raise ValueError(f"bench: '{value}' names no reward model of the suite (have: {', '.join(names) or 'none'})")
        return names[value[1:]]
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return value


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-").lower() or "run"


class Bench:
    def __init__(self, suite: dict[str, Any] | str | Path, overrides: list[str] | None = None, quiet: bool = False):
        from ..config import TaskConfig, apply_overrides

        if not isinstance(suite, dict):
            path = Path(suite)
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such suite file")
            suite = yaml.safe_load(path.read_text()) or {}
        self.suite = apply_overrides(copy.deepcopy(suite), list(overrides or []))
        unknown = set(self.suite) - {"name", "output_dir", "task", "sft", "eval", "pairs", "reward_models", "proxy", "methods", "seed", "description"}
        if unknown:
            raise ValueError(f"bench suite: unknown keys {sorted(unknown)}")
        if not self.suite.get("methods"):
            raise ValueError("bench suite: 'methods' is empty")
        self.name = self.suite.get("name", "bench")
        self.out = Path(self.suite.get("output_dir", f"runs/bench/{_slug(self.name)}"))
        self.task_config = TaskConfig(**self.suite.get("task", {}))
        self.seed = int(self.suite.get("seed", 0))
        self.quiet = quiet
        self.rm_dirs: dict[str, str] = {}
        self.points: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[alignkit bench {self.name}] {message}", flush=True)

    # -- pieces -------------------------------------------------------------------------------------
    def task(self):
        from ..tasks import get_task

        return get_task(self.task_config)

    def _common(self) -> dict[str, Any]:
        return {"task": self.task_config.model_dump(mode="json"), "data": {"max_length": 96}, "train": {"progress": False, "seed": self.seed}}

    def _train(self, recipe: dict[str, Any], output_dir: Path) -> Path:
        from ..algorithms import train
        from ..config import load_recipe

        final = output_dir / "final"
        if final.exists() and (output_dir / "bench-done").exists():
            return final  # cached from an earlier run of the suite
        # a method without bench-done did not finish: the suite owns its folder and runs it again
        recipe = _merge(recipe, {"train": {"output_dir": str(output_dir), "overwrite": True}})
        start = time.perf_counter()
        result = Path(train(load_recipe(recipe)))
        (output_dir / "bench-done").write_text(json.dumps({"seconds": time.perf_counter() - start}))
        self.timings[str(output_dir)] = time.perf_counter() - start
        return result

    def sft_dir(self) -> Path:
        spec = self.suite.get("sft")
        if isinstance(spec, str):
            if not Path(spec).exists():
                raise FileNotFoundError(f"bench: sft model {spec} does not exist (train recipes/sft.yaml first, or give a recipe mapping)")
            return Path(spec)
        recipe = _merge({"algorithm": "sft", **self._common()}, spec or {})
        self.say("training the start (SFT) model")
        return self._train(recipe, self.out / "sft")

    def pairs_file(self, spec: dict[str, Any], policy_dir: Path, tag: str) -> Path:
        """Preference pairs (cached by their spec): two samples per prompt from ``policy_dir`` (or the
        task's base distribution), labelled by the task's oracle, with label noise."""
        from ..data.records import write_jsonl
        from ..tasks import task_rows

        spec = {"prompts": 1024, "source": "policy", "label_noise": 0.0, "temperature": self.task_config.label_temperature, "split": "train",
                "seed": self.seed, **spec}
        key = hashlib.sha1(json.dumps([spec, str(policy_dir), self.task_config.model_dump(mode="json")], sort_keys=True).encode()).hexdigest()[:10]
        path = self.out / "pairs" / f"{_slug(tag)}-{key}.jsonl"
        if path.exists():
            return path
        task = self.task()
        if spec["source"] == "task":
            rows = task_rows(task, "pair", spec["prompts"], spec["split"], self.task_config.model_copy(update={"label_noise": spec["label_noise"]}))
        else:
            from ..models.loading import load_policy_for_inference, load_tokenizer

            model, tokenizer = load_policy_for_inference(policy_dir), load_tokenizer(policy_dir)
            rows = sample_pairs(model, tokenizer, task, task.prompts(spec["prompts"], spec["split"]), sample_seed=spec["seed"] + 17,
                                label_seed=spec["seed"], temperature=spec["temperature"], label_noise=spec["label_noise"],
                                noise_seed=f"{spec['seed']}-{tag}")
        rows = [r for r in rows if r["chosen"].strip() and r["rejected"].strip()]  # an empty sample is not a valid pair row
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
        return path

    def _recipe(self, method: dict[str, Any], start: Path, pairs: Path | None) -> dict[str, Any]:
        recipe = _merge({**self._common(), "model": {"path": str(start)}}, _substitute(method.get("recipe", {}), self.rm_dirs))
        if recipe.get("algorithm") in ("dpo", "reward") and pairs is not None and not recipe.get("data", {}).get("train"):
            recipe = _merge(recipe, {"data": {"train": str(pairs)}})
        return recipe

    # -- the run -------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from ..config import apply_overrides
        from ..engine.checkpoint import list_checkpoints
        from ..rewards.sources import build_reward_source

        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        sft = self.sft_dir()
        for name, spec in (self.suite.get("reward_models") or {}).items():
            pairs = self.pairs_file(_merge(self.suite.get("pairs", {}), spec.get("pairs", {})), sft, f"rm-{name}")
            rm_base = {**self._common(), "algorithm": "reward", "model": {"path": str(sft)}, "data": {"train": str(pairs)}}
            recipe = _merge(rm_base, spec.get("recipe", {}))
            self.say(f"training reward model '{name}'")
            self.rm_dirs[name] = str(self._train(recipe, self.out / "reward-models" / _slug(name)))
        proxy_spec = self.suite.get("proxy")
        proxy = build_reward_source(_substitute(proxy_spec, self.rm_dirs)) if proxy_spec else None
        ev = self.suite.get("eval", {})
        evaluator = ReferenceEvaluator.from_dir(self.task(), sft, n_prompts=ev.get("prompts", 128), n_samples=ev.get("samples", 2),
                                                max_new_tokens=ev.get("max_new_tokens", 40), seed=ev.get("seed", 1), proxy=proxy)
        start_point = evaluator.evaluate(sft, "start")
        start_point.update({"method": "start", "run": "start", "step": 0})
        self.points.append(start_point)
        self.say(f"start model: gold {start_point['gold_reward']:+.3f}")
        for method in self.suite["methods"]:
            name = method["name"]
            pairs_spec = _merge(self.suite.get("pairs", {}), method.get("pairs", {}))
            sweep = method.get("sweep") or [{}]
            for override in sweep:
                label = ",".join(f"{k.split('.')[-1]}={v}" for k, v in override.items()) or "default"
                run_dir = self.out / "runs" / _slug(f"{name}-{label}")
                base = {"method": name, "run": label, "x": method.get("x"), "group": method.get("group", name)}
                if method.get("type") == "iterative_dpo":
                    self._iterative(method, override, sft, pairs_spec, run_dir, evaluator, base)
                    continue
                if "strategy" in method:  # a policy = model + decoding strategy: nothing to train
                    model = method.get("model", str(sft))
                    options = {**(method.get("options") or {}), **override}
                    point = evaluator.evaluate(model, f"{name}[{label}]", strategy=method["strategy"], strategy_options=options)
                    self.points.append({**point, **base, "step": "final", "final": True, "dir": model})
                    kl = "none (a search)" if point["kl"] is None else f"{point['kl']:.2f}"
                    self.say(f"{name} [{label}]: gold {point['gold_reward']:+.3f}, KL {kl}, {point['cost/wall_s']:.1f} s")
                    continue
                recipe = self._recipe(method, sft, None)
                if recipe.get("algorithm") in ("dpo",):
                    recipe = self._recipe(method, sft, self.pairs_file(pairs_spec, sft, name))
                recipe = apply_overrides(recipe, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in override.items()])
                self.say(f"{name} [{label}]: training")
                final = self._train(recipe, run_dir)
                if method.get("checkpoints"):
                    for ckpt in list_checkpoints(run_dir):
                        point = evaluator.evaluate(ckpt / "model", f"{name}@{ckpt.name}")
                        self.points.append({**point, **base, "step": int(ckpt.name.split("-")[1]), "final": False, "dir": str(run_dir)})
                point = evaluator.evaluate(final, f"{name}[{label}]")
                self.points.append({**point, **base, "step": "final", "final": True, "dir": str(run_dir)})
                self.say(f"{name} [{label}]: gold {point['gold_reward']:+.3f}, KL {point['kl']:.2f}, length {point['length']:.1f}")
        return self.write(time.perf_counter() - t0)

    def _iterative(self, method, override, sft: Path, pairs_spec: dict, run_dir: Path, evaluator: ReferenceEvaluator, base: dict) -> None:
        """Online/iterative DPO: each round samples pairs from the current policy, labels them with the
        task's oracle and runs DPO from the current policy (which is that round's reference)."""
        from ..config import apply_overrides

        rounds = int(method.get("rounds", 3))
        per_round = int(method.get("prompts_per_round", max(1, pairs_spec.get("prompts", 1024) // rounds)))
        current = sft
        for r in range(rounds):
            spec = {**pairs_spec, "prompts": per_round * (r + 1), "source": "policy", "seed": self.seed + r}
            pairs = self.pairs_file(spec, current, f"{base['method']}-round{r}")
            if r:  # keep only the new prompts of this round (the first per_round*r rows were earlier rounds' prompts)
                lines = pairs.read_text().splitlines()
                pairs.write_text("\n".join(lines[len(lines) * r // (r + 1):]) + "\n")
            dotted = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in override.items()]
            recipe = apply_overrides(self._recipe(method, current, pairs), dotted)
            self.say(f"{base['method']}: round {r + 1}/{rounds} on {pairs.name}")
            current = self._train(recipe, run_dir / f"round-{r}")
            point = evaluator.evaluate(current, f"{base['method']}@round{r + 1}")
            self.points.append({**point, **base, "step": f"round{r + 1}", "final": r == rounds - 1, "dir": str(run_dir)})
            self.say(f"{base['method']} round {r + 1}: gold {point['gold_reward']:+.3f}, KL {point['kl']:.2f}")

    # -- outputs -------------------------------------------------------------------------------------
    def write(self, seconds: float) -> dict[str, Any]:
        from ..evaluation.report import write_report

        figures = draw_figures(self.points, self.out, self.name)
        columns = ("method", "run", "step", "gold_reward", "gold_reward_se", "kl_k1", "kl_k3", "win_rate", "proxy", "length", "words",
                   "distinct_2", "self_bleu", "malformed")
        table = [{k: p.get(k) for k in columns if k in p} for p in self.points]
        result = {"name": self.name, "seconds": seconds, "figures": {k: str(v) for k, v in figures.items()}, "points": self.points,
                  "suite": self.suite}
        (self.out / "points.json").write_text(json.dumps(result, indent=1, default=str))
        blocks: list[tuple[str, Any]] = [("Suite", self.suite.get("description", self.name)), ("Points", table)]
        blocks += [(title, path) for title, path in figures.items()]
        finals = [p for p in self.points if p.get("final") or p["method"] == "start"]
        blocks.append(("Samples (final models)", [{"method": p["method"], **s} for p in finals for s in p["samples"][:2]]))
        blocks.append(("Run time", f"{seconds:.0f} s"))
        write_report(self.out, f"alignkit bench: {self.name}", blocks)
        self.say(f"report: {self.out / 'report.html'} ({seconds:.0f} s)")
        return result


def draw_figures(points: list[dict[str, Any]], out: Path, title: str) -> dict[str, Path]:
    """frontier.png, overoptimisation.png (if proxy scores), by_x.png (if methods have x), lengths.png."""
    import matplotlib.pyplot as plt  # headless: evaluation.report sets the Agg backend

    from ..evaluation.report import plot_frontier, save_figure

    figures: dict[str, Path] = {}
    start = next((p for p in points if p["method"] == "start"), None)
    methods = list(dict.fromkeys(p["method"] for p in points if p["method"] != "start"))

    def series(method):
        pts = [p for p in points if p["method"] == method and p["kl"] is not None]  # a search strategy has no KL
        return ([start] if start else []) + sorted(pts, key=lambda p: p["kl"])

    frontier = {m: [(p["kl"], p["gold_reward"], "", p["gold_reward_se"]) for p in series(m)] for m in methods}
    figures["Gold reward vs KL frontier"] = plot_frontier(frontier, out / "frontier.png", f"{title}: gold reward vs KL",
                                                          xlabel="KL(policy ‖ start), nats per completion (k1)", size=(6, 4.2))

    if any("proxy" in p for p in points):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
        for m in methods:
            s = [p for p in series(m) if "proxy" in p]
            axes[0][0].plot([p["kl"] for p in s], [p["proxy"] for p in s], marker="o", label=m)
            axes[0][1].plot([p["kl"] for p in s], [p["gold_reward"] for p in s], marker="o", label=m)
        for ax, name in zip(axes[0], ("proxy (reward-model) score", "gold reward")):
            ax.set_xlabel("KL(policy ‖ start), nats (k1)")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{title}: over-optimisation (proxy vs gold)")
        figures["Proxy vs gold reward (over-optimisation)"] = save_figure(fig, out / "overoptimisation.png")

    finals = [p for p in points if p.get("final") and p.get("x") is not None]
    if finals:
        groups = {g: sorted((p for p in finals if p["group"] == g), key=lambda p: p["x"]) for g in dict.fromkeys(p["group"] for p in finals)}
        by_x = {g: [(p["x"], p["gold_reward"], "", p["gold_reward_se"]) for p in s] for g, s in groups.items()}
        figures["Final gold reward vs x"] = plot_frontier(by_x, out / "by_x.png", title=None, xlabel="x (e.g. label-flip rate)",
                                                          ylabel="mean gold reward (final model)", size=(6, 4.2))

    finals = [p for p in points if p.get("final") or p["method"] == "start"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [p["method"] if p["run"] in ("default", "start") else f"{p['method']}\n{p['run']}" for p in finals]
    ax.bar(range(len(finals)), [p["length"] for p in finals])
    ax.set_xticks(range(len(finals)), labels, fontsize=7)
    ax.set_ylabel("mean completion length (tokens)")
    figures["Completion length"] = save_figure(fig, out / "lengths.png")
    return figures


def run_bench(suite: str | Path | dict, overrides: list[str] | None = None, quiet: bool = False) -> dict[str, Any]:
    return Bench(suite, overrides, quiet).run()

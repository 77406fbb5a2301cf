"""The iterative-alignment controller: rounds of sample -> judge -> build -> train -> update reference -> evaluate.

One :class:`IterativeLoop` holds one long-lived :class:`~alignkit.engine.trainer.Trainer` (the policy is
loaded once; every round's ``fit`` continues the same model object, AdamW moments, learning-rate schedule
— spanning ``rounds x steps_per_round`` — and step counter), one rollout engine and one judge. Each round:

1. **sample** K completions for each of the round's prompts from the live policy (``alignkit.rollout.generate``
   with the held engine); sample ``j`` of the prompt with pool index ``i`` draws from the stream named by
   (``seed + round``, job id ``i * K + j``), so the samples do not depend on batch sizes;
2. **judge** them in batches (:mod:`alignkit.loops.judges`); empty completions get no score;
3. **build** rows of the algorithm's record kind (:mod:`alignkit.loops.builders`) and load them through the
   normal data path (``trainer.load_examples(rows, "train")``);
4. **train** ``steps_per_round`` steps (``trainer.fit(examples, steps=...)``);
5. **update the reference**: ``previous`` (``Reference.refresh(policy, 1)``: the next round's reference is
   the iterate it starts from), ``soft`` (``refresh(policy, a)``) or ``fixed`` (the starting model);
6. **evaluate**: the task's gold reward on held-out prompts and KL to the starting model.

Provenance: every sample (round, policy step, prompt index, judge, score, the judge's raw answer, its role
in the built examples) is written to ``<output_dir>/rounds/round-R.jsonl``; the round's statistics
(counts, judge stats incl. unparseable answers, the fit's last metrics, time split generate/judge/train,
evaluation) to ``<output_dir>/rounds/summary.json``.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any

from ..algorithms import build_algorithm
from ..config import Recipe, load_recipe
from ..core.progress import say
from ..data.records import load_records
from ..data.sources import read_options
from ..engine.trainer import Trainer
from ..evaluation.policy import evaluate_policy
from ..models.loading import is_peft
from ..models.reference import Reference, frozen
from ..rollout.engine import build_rollout_engine
from ..rollout.generate import generate
from ..rollout.local import MixtureGuide
from ..tasks import get_task
from .builders import REAL, Group, build_builder
from .judges import JudgeEnv, build_judge


class LoopTrainer(Trainer):
    """A :class:`Trainer` whose reference (what ``ctx.reference`` gives the algorithm, e.g. DPO's cache) is
    the loop's own :class:`Reference` when the loop sets one."""

    loop_reference: Reference | None = None

    def reference(self, keep: bool = True, temperature: float = 1.0) -> Reference:
        if self.loop_reference is None:
            return super().reference(keep, temperature)
        self.loop_reference.temperature = temperature
        return self.loop_reference


OPPONENT_JOBS = 1 << 40  # job-id offset of the opponent's samples: streams of their own


def round_seed(seed: int, round_index: int) -> int:
    """The seed naming round ``round_index``'s sample streams."""
    return seed * 1_000_003 + round_index


class IterativeLoop:
    """Iterative alignment from a recipe with an ``iterate:`` section (see the module docstring)."""

    def __init__(self, recipe: Recipe):
        if recipe.iterate is None:
            raise ValueError("the recipe has no iterate: section (rounds, samples_per_prompt, judge, builder, ...); see recipes/iterative_dpo.yaml")
        if recipe.algorithm not in ("dpo", "sft", "sppo"):
            raise ValueError(f"iterate trains algorithm dpo (pair builders, any dpo.loss), sft (best_of_k) or sppo (win_rate), not {recipe.algorithm!r}")
        self.recipe, self.cfg = recipe, recipe.iterate
        cfg = self.cfg
        self.builder = build_builder(cfg.builder, cfg.builder_params)
        self.algorithm = build_algorithm(recipe)
        if self.builder.kind != self.algorithm.data_kind:
            raise ValueError(f"iterate.builder {cfg.builder!r} makes {self.builder.kind} examples but algorithm {recipe.algorithm!r} trains on "
                             f"{self.algorithm.data_kind} data (pair builders go with algorithm: dpo, best_of_k with algorithm: sft, win_rate with algorithm: sppo)")
        if recipe.data.kind not in ("auto", self.algorithm.data_kind):
            raise ValueError(f"data.kind={recipe.data.kind}: iterate builds {self.algorithm.data_kind} rows; leave data.kind at auto")
        self.seed = recipe.train.seed if cfg.seed is None else cfg.seed
        self.progress = recipe.train.progress
        self.task = get_task(recipe.task)
        self.pool = self._prompt_pool()
        self.trainer = LoopTrainer(recipe, self.algorithm, schedule_steps=cfg.rounds * cfg.steps_per_round)
        model = self.trainer.model
        self.reference: Reference | None = None
        if is_peft(model):
            if cfg.reference != "fixed":
                raise ValueError("with LoRA the reference is the base weights (adapter off): set iterate.reference=fixed")
        elif recipe.algorithm in ("dpo", "sppo") and getattr(self.algorithm, "needs_reference", True):
            self.reference = Reference(frozen(copy.deepcopy(model)), "frozen")
            self.trainer.loop_reference = self.reference
        self.start_model = None
        if cfg.eval_prompts and not is_peft(model):
            fixed = self.reference is not None and cfg.reference == "fixed"
            self.start_model = self.reference.model if fixed else frozen(copy.deepcopy(model))
        if cfg.opponent != "policy":
            if self.reference is None:
                raise ValueError(f"iterate.opponent={cfg.opponent} samples from the reference model: it needs algorithm dpo or sppo on a full model (not LoRA)")
            if cfg.opponent == "mixture" and cfg.backend in ("hf", "vllm"):
                raise ValueError(f"iterate.opponent=mixture samples through alignkit's decode loop (a guide); iterate.backend={cfg.backend} cannot")
        env = JudgeEnv(task=self.task, model=model, tokenizer=self.trainer.tokenizer, batch_size=cfg.generation_batch_size, progress=self.progress)
        self.judge = build_judge(cfg.judge, env)
        if self.builder.needs_scores and self.judge.name == "none":
            raise ValueError(f"iterate.builder {cfg.builder!r} needs scores; iterate.judge is none")
        self.engine = build_rollout_engine(cfg.backend, model, self.trainer.tokenizer, vllm_options=recipe.rl.sampling.vllm)
        self.rounds_dir = Path(self.trainer.run_dir) / "rounds"
        self.rounds_dir.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, Any]] = []
        self.start_eval: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------------
    def _prompt_pool(self) -> list[tuple[Any, str | None]]:
        """(prompt, real completion or None) for every prompt the run samples."""
        cfg = self.cfg
        n = cfg.prompts_per_round * (cfg.rounds if cfg.new_prompts else 1)
        source = self.recipe.data.train
        if source is not None:
            records, _ = load_records(source, kind="auto", skip_invalid=self.recipe.data.skip_invalid, read=read_options(self.recipe.data, "train"))
            rows = [(r["prompt"], r.get("completion", r.get("chosen"))) for r in records]
            if len(rows) < n:
                raise ValueError(f"data.train has {len(rows)} rows; iterate needs prompts_per_round x rounds = {n} (or iterate.new_prompts=false)")
        elif self.builder.needs_real:
            rows = [(r["prompt"], r["completion"]) for r in self.task.sft_rows(n, "train")]
        else:
            rows = [(p, None) for p in self.task.prompts(n, "train")]
        return rows[:n]

    def _round_rows(self, r: int) -> tuple[int, list[tuple[Any, str | None]]]:
        lo = r * self.cfg.prompts_per_round if self.cfg.new_prompts else 0
        return lo, self.pool[lo : lo + self.cfg.prompts_per_round]

    def sample(self, r: int, prompts: list[Any], first_index: int):
        """K samples per prompt from the live policy; streams named by (seed, round) and job id (pool index, j)."""
        cfg, model = self.cfg, self.trainer.model
        k = cfg.samples_per_prompt
        job_ids = [(first_index + i) * k + j for i in range(len(prompts)) for j in range(k)]
        was_training = model.training
        model.eval()
        try:
            return generate(model, self.trainer.tokenizer, prompts, n=k, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, batch_size=cfg.generation_batch_size, seed=round_seed(self.seed, r), job_ids=job_ids,
                            engine=self.engine, progress=self.progress)
        finally:
            model.train(was_training)

    def sample_opponents(self, r: int, prompts: list[Any], first_index: int):
        """``opponent_samples`` per prompt from the reference (``iterate.opponent: reference``) or from the geometric
        mixture of the live policy and the reference (``mixture``), on streams of their own (job ids offset by 2^40)."""
        cfg, model = self.cfg, self.trainer.model
        m = cfg.opponent_samples
        job_ids = [OPPONENT_JOBS + (first_index + i) * m + j for i in range(len(prompts)) for j in range(m)]
        reference = self.reference.model
        sampler, guide = (reference, None) if cfg.opponent == "reference" else (model, MixtureGuide(reference, cfg.mixture_coef, self.trainer.tokenizer.pad_token_id))
        was_training = model.training
        model.eval()
        try:
            return generate(sampler, self.trainer.tokenizer, prompts, n=m, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, batch_size=cfg.generation_batch_size, seed=round_seed(self.seed, r), job_ids=job_ids, guide=guide,
                            progress=self.progress)
        finally:
            model.train(was_training)

    def evaluate(self, name: str) -> dict[str, Any] | None:
        """Gold reward (± s.e.) and KL to the starting model on the task's held-out prompts."""
        cfg, model = self.cfg, self.trainer.model
        if not cfg.eval_prompts:
            return None
        was_training = model.training
        model.eval()
        try:
            result = evaluate_policy(name, model, self.trainer.tokenizer, self.task, self.task.prompts(cfg.eval_prompts, "test"),
                                     reference=self.start_model, n_samples=cfg.eval_samples, max_new_tokens=cfg.eval_max_new_tokens,
                                     seed=self.seed + 1, keep_samples=4)
        finally:
            model.train(was_training)
        return result.as_dict()

    # ----------------------------------------------------------------------------------------------
    def run_round(self, r: int) -> dict[str, Any]:
        cfg, trainer = self.cfg, self.trainer
        k = cfg.samples_per_prompt
        lo, rows = self._round_rows(r)
        prompts = [p for p, _ in rows]
        step0 = trainer.step
        t0 = time.perf_counter()
        own = self.sample(r, prompts, lo)
        members = [own[i * k : (i + 1) * k] for i in range(len(prompts))]  # each prompt's samples: the policy's K, then the opponent's M
        opponents: list[int] = []
        if cfg.opponent != "policy":
            m = cfg.opponent_samples
            other = self.sample_opponents(r, prompts, lo)
            members = [group + other[i * m : (i + 1) * m] for i, group in enumerate(members)]
            opponents = list(range(k, k + m))
        groups = [[s.completion for s in group] for group in members]
        t1 = time.perf_counter()
        judgement = self.judge.judge(prompts, groups)
        t2 = time.perf_counter()
        scores = [list(g) for g in judgement.scores]
        empty = 0
        for i, comps in enumerate(groups):
            for j, c in enumerate(comps):
                if not c.strip():
                    scores[i][j] = None
                    empty += 1
        rng = random.Random(f"{self.seed}-{r}-build")
        kind = self.builder.kind
        built: list[dict[str, Any]] = []
        roles = [[[] for _ in comps] for comps in groups]
        real_roles: list[list[str]] = [[] for _ in groups]
        for i, (prompt, real) in enumerate(rows):
            extra = {"preferences": judgement.preferences[i]} if judgement.preferences is not None else {}
            if opponents:
                extra["opponents"] = opponents
            group = Group(prompt, groups[i], scores[i], real, extra)
            for item in self.builder(group, rng):
                if kind == "win_rate":  # (index, estimated win rate)
                    item, rate = item[:1], float(item[1])
                texts = [group.text(x) for x in item]
                if any(t is None or not str(t).strip() for t in texts):
                    continue
                if kind == "pair":
                    built.append({"prompt": prompt, "chosen": texts[0], "rejected": texts[1]})
                    if opponents:  # which side the opponent wrote (XPO's exploration term reads it)
                        built[-1]["opponent"] = 1 if item[0] in opponents else -1 if item[1] in opponents else 0
                    for x, role in zip(item, ("chosen", "rejected")):
                        (real_roles[i] if x == REAL else roles[i][x]).append(role)
                elif kind == "win_rate":
                    built.append({"prompt": prompt, "completion": texts[0], "win_rate": rate})
                    roles[i][item[0]].append("win_rate")
                else:
                    built.append({"prompt": prompt, "completion": texts[0]})
                    roles[i][item[0]].append("sft")
        self._write_provenance(r, step0, lo, rows, members, scores, judgement, roles, real_roles)
        fit: dict[str, Any] = {}
        if r > 0 and cfg.reset_optimizer and trainer.optimizer is not None:
            trainer.optimizer.state.clear()
        if len(built) >= trainer.cfg.batch_size:
            examples = trainer.load_examples(built, "train")
            fit = trainer.fit(examples, steps=cfg.steps_per_round)
        else:
            say(f"round {r}: {len(built)} examples, fewer than train.batch_size={trainer.cfg.batch_size}: no training this round", trainer.strategy.is_main)
        t3 = time.perf_counter()
        if self.reference is not None and cfg.reference != "fixed":
            self.reference.refresh(trainer.model, 1.0 if cfg.reference == "previous" else cfg.reference_alpha)
        if cfg.save_rounds:
            trainer.save(self.rounds_dir / f"model-{r}")
        due = (r + 1) % cfg.eval_every == 0 or r == cfg.rounds - 1
        evaluation = self.evaluate(f"round-{r}") if due else None
        judged = [s for g in scores for s in g if s is not None]
        stats = {
            "round": r, "policy_step_start": step0, "policy_step_end": trainer.step, "prompts": len(prompts), "samples": sum(map(len, members)),
            "empty": empty, "judge": self.judge.name, **judgement.stats, "scored": len(judged),
            "score_mean": sum(judged) / len(judged) if judged else None, "builder": cfg.builder, "examples": len(built),
            "steps": trainer.step - step0, "fit": {k2: v for k2, v in fit.items() if isinstance(v, (int, float))},
            "seconds": {"generate": t1 - t0, "judge": t2 - t1, "train": t3 - t2, "eval": time.perf_counter() - t3}, "eval": evaluation,
        }
        self.history.append(stats)
        gold = f", gold {evaluation['gold_reward']:+.3f}" if evaluation else ""
        say(f"round {r + 1}/{cfg.rounds}: {len(built)} examples, {stats['steps']} steps{gold}", trainer.strategy.is_main)
        self._write_summary()
        return stats

    def _write_provenance(self, r, step0, lo, rows, members, scores, judgement, roles, real_roles) -> None:
        if not self.trainer.strategy.is_main:
            return
        k = self.cfg.samples_per_prompt
        with open(self.rounds_dir / f"round-{r}.jsonl", "w") as f:
            for i, (prompt, real) in enumerate(rows):
                if real is not None:
                    f.write(json.dumps({"round": r, "policy_step": step0, "prompt_index": lo + i, "sample": None, "source": "data", "prompt": prompt,
                                        "completion": real, "used_as": real_roles[i]}) + "\n")
                for j, s in enumerate(members[i]):
                    source = "policy" if j < k else self.cfg.opponent
                    row = {"round": r, "policy_step": step0, "prompt_index": lo + i, "sample": j, "source": source, "prompt": prompt,
                           "completion": s.completion, "tokens": len(s.completion_ids), "finished": s.finished, "judge": self.judge.name,
                           "score": scores[i][j], "used_as": roles[i][j]}
                    if judgement.answers is not None:
                        row["judge_answer"] = judgement.answers[i][j]
                    if judgement.preferences is not None:
                        row["preferences"] = judgement.preferences[i][j]
                    f.write(json.dumps(row, default=str) + "\n")

    def _write_summary(self) -> None:
        if self.trainer.strategy.is_main:
            summary = {"start": self.start_eval, "rounds": self.history}
            (self.rounds_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    def run(self) -> dict[str, Any]:
        """Every round, then the final model (``train.save_final``); returns the summary."""
        try:
            self.start_eval = self.evaluate("start")
            if self.start_eval:
                say(f"start: gold {self.start_eval['gold_reward']:+.3f}", self.trainer.strategy.is_main)
            for r in range(self.cfg.rounds):
                self.run_round(r)
            final = None
            if self.recipe.train.save_final:
                final = self.trainer.save(Path(self.trainer.run_dir) / "final")
            self._write_summary()
            return {"start": self.start_eval, "rounds": self.history, "final": str(final) if final else None, "rounds_dir": str(self.rounds_dir)}
        finally:
            self.close()

    def close(self) -> None:
        self.engine.close()
        self.trainer.close()


def iterate(recipe: Recipe | str | Path | dict, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run an iterative recipe (a :class:`Recipe`, a YAML path or a dict, plus dotted overrides); returns
    ``{"start": eval, "rounds": [per-round stats], "final": model folder, "rounds_dir": provenance folder}``."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides or [])
    elif overrides:
        recipe = load_recipe(recipe.model_dump(mode="json"), overrides)
    return IterativeLoop(recipe).run()

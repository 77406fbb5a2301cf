"""The iterative-alignment controller: rounds of sample -> judge -> build -> train -> update reference -> evaluate.

One :class:`IterativeLoop` holds one long-lived :class:`~alignkit.engine.trainer.Trainer` (the policy is
loaded once; every round's ``fit`` continues the same model object, AdamW moments, learning-rate schedule
— spanning ``rounds x steps_per_round`` — and step counter), one rollout engine and one judge. Each round:

1. **sample** K completions for each of the round's prompts from the live policy (``alignkit.rollout.generate``
   with the held engine); sample ``j`` of the prompt with pool index ``i`` draws from the stream named by
   (``seed + round``, job id ``i * K + j``), so the samples do not depend on batch sizes; with ``iterate.opponent``
   the opponent's samples, and with ``iterate.teacher`` a teacher model's completions, join each prompt's group
   (``teacher.use: pool``) or give its chosen side (``use: chosen``);
2. **judge** them in batches (:mod:`alignkit.loops.judges`); empty completions get no score;
3. **build** rows of the algorithm's record kind (:mod:`alignkit.loops.builders`) and load them through the
   normal data path (``trainer.load_examples(rows, "train")``);
4. **train** ``steps_per_round`` steps (``trainer.fit(examples, steps=...)``);
5. **update the reference**: ``previous`` (``Reference.refresh(policy, 1)``: the next round's reference is
   the iterate it starts from), ``soft`` (``refresh(policy, a)``), ``fixed`` (the starting model),
   ``geometric`` (INPO) or ``momentum`` (accelerated PO) (:mod:`.references`);
6. **evaluate**: the task's gold reward on held-out prompts and KL to the starting model;
7. **checkpoint** (``iterate.checkpoint_rounds``): the trainer's resumable checkpoint, the reference's weights
   and the loop's state, so that ``train.resume=true`` continues a killed run at its round and step.

``iterate.update: extragradient`` (EGPO) trains each round twice from ``θ_t`` (see :meth:`IterativeLoop.extragradient`).

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

import torch

from ..algorithms import build_algorithm
from ..config import Recipe, load_recipe
from ..core.progress import say
from ..data.records import load_records
from ..data.sources import read_options
from ..engine.checkpoint import read_state
from ..engine.trainer import Trainer
from ..evaluation.policy import evaluate_policy
from ..models.loading import is_peft
from ..models.reference import Reference, frozen
from ..rollout.engine import build_rollout_engine
from ..rollout.generate import generate
from ..rollout.local import MixtureGuide
from ..tasks import get_task, task_rows
from .builders import REAL, REAL_REJECTED, Group, build_builder
from .judges import JudgeEnv, build_judge
from .references import LogLinearReference, build_reference, copy_weights, load_reference, save_reference


class LoopTrainer(Trainer):
    """A :class:`Trainer` whose reference (what ``ctx.reference`` gives the algorithm, e.g. DPO's cache) is
    the loop's own :class:`Reference` when the loop sets one."""

    loop_reference: Reference | None = None
    fit_shift = 0  # a resumed loop: the global step at which the first fit's local step 0 lies
    _shift = 0

    def reference(self, keep: bool = True, temperature: float = 1.0) -> Reference:
        if self.loop_reference is None:
            return super().reference(keep, temperature)
        self.loop_reference.temperature = temperature
        return self.loop_reference

    def prepare(self, train_examples, eval_examples=None, steps=None):
        """As :meth:`Trainer.prepare`; on the first fit of a resumed loop the checkpoint's global step is
        turned into the step inside the round's fit (``fit_shift``: the global step the round began at)."""
        self._shift = self.fit_shift if self.policy is None and self.resumed_from is not None else 0
        try:
            ctx, order, start, total = super().prepare(train_examples, eval_examples, steps)
            return ctx, order, start - self._shift, total
        finally:
            self._shift = 0

    def context(self, order=None, start: int = 0, stop: int = 0):
        return super().context(order, start - self._shift, stop)

    def start_weights(self):
        """The run's starting model, loaded again (a resumed loop's KL baseline)."""
        return self._load_start()


OPPONENT_JOBS = 1 << 40  # job-id offset of the opponent's samples: streams of their own
TEACHER_JOBS = 2 << 40  # job-id offset of the teacher's samples


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
        self.teacher_chosen = cfg.teacher is not None and cfg.teacher.use == "chosen"
        if cfg.teacher is not None:
            self._check_teacher()
        self.pool = self._prompt_pool()
        passes = 2 if cfg.update == "extragradient" else 1
        self.trainer = LoopTrainer(recipe, self.algorithm, schedule_steps=cfg.rounds * cfg.steps_per_round * passes)
        model = self.trainer.model
        self.resumed = self.trainer.resumed_from is not None
        self.reference: Reference | None = None
        if is_peft(model):
            if cfg.reference != "fixed":
                raise ValueError("with LoRA the reference is the base weights (adapter off): set iterate.reference=fixed")
            if self.resumed:
                raise ValueError("resuming an iterate run is for full models; with LoRA start the run again")
        elif recipe.algorithm in ("dpo", "sppo") and getattr(self.algorithm, "needs_reference", True):
            self.reference = build_reference(cfg.reference, model, cfg.reference_alpha)
            self.trainer.loop_reference = self.reference
        elif cfg.reference in ("geometric", "momentum"):
            raise ValueError(f"iterate.reference={cfg.reference} is a reference for algorithm dpo or sppo")
        self.start_model = None
        if cfg.eval_prompts and not is_peft(model):
            fixed = self.reference is not None and cfg.reference == "fixed"
            self.start_model = self.reference.model if fixed else frozen(self.trainer.start_weights() if self.resumed else copy.deepcopy(model))
        if cfg.opponent != "policy":
            if self.reference is None:
                raise ValueError(f"iterate.opponent={cfg.opponent} samples from the reference model: it needs algorithm dpo or sppo on a full model (not LoRA)")
            if isinstance(self.reference, LogLinearReference):
                raise ValueError(f"iterate.opponent={cfg.opponent} samples one reference model: use iterate.reference previous, fixed or soft, not {cfg.reference}")
            if cfg.opponent == "mixture" and cfg.backend in ("hf", "vllm"):
                raise ValueError(f"iterate.opponent=mixture samples through alignkit's decode loop (a guide); iterate.backend={cfg.backend} cannot")
        env = JudgeEnv(task=self.task, model=model, tokenizer=self.trainer.tokenizer, batch_size=cfg.generation_batch_size, progress=self.progress)
        self.judge = build_judge(cfg.judge, env)
        if self.builder.needs_scores and self.judge.name == "none":
            raise ValueError(f"iterate.builder {cfg.builder!r} needs scores; iterate.judge is none")
        self.engine = build_rollout_engine(cfg.backend, model, self.trainer.tokenizer, vllm_options=recipe.rl.sampling.vllm)
        self.teacher = self.teacher_tokenizer = None
        if cfg.teacher is not None:
            from ..models.loading import load_policy_for_inference, load_tokenizer

            self.teacher = frozen(load_policy_for_inference(cfg.teacher.path)).to(next(model.parameters()).device)  # where the policy is
            self.teacher_tokenizer = load_tokenizer(cfg.teacher.path)
        self.rounds_dir = Path(self.trainer.run_dir) / "rounds"
        self.rounds_dir.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, Any]] = []
        self.start_eval: dict[str, Any] | None = None
        self.first_round = 0
        self.pending: dict[str, Any] | None = None  # a resumed round that was training when the run stopped
        self.checkpointed = -1  # the trainer step of the last round checkpoint
        if self.resumed:
            self._restore()

    # ----------------------------------------------------------------------------------------------
    def _check_teacher(self) -> None:
        """``iterate.teacher``: ``pool`` needs a builder that reads scores (it picks among the judged samples);
        ``chosen`` needs a builder that takes each prompt's given completion as the chosen side (``spin``)."""
        teacher, builder = self.cfg.teacher, self.cfg.builder
        if teacher.use == "pool" and not self.builder.needs_scores:
            raise ValueError(f"iterate.teacher.use=pool: builder {builder!r} reads no scores, so it cannot pick the teacher's completion; "
                             "use a scoring builder (best_vs_worst, all_pairs, ...) or iterate.teacher.use=chosen with builder spin")
        if teacher.use == "chosen" and not (self.builder.needs_real and not self.builder.needs_pairs):
            raise ValueError(f"iterate.teacher.use=chosen takes the teacher's completion as the chosen side of builder spin, not {builder!r}; "
                             "with a scoring builder use iterate.teacher.use=pool")

    def _prompt_pool(self) -> list[tuple[Any, str | None]]:
        """(prompt, real completion or None) for every prompt the run samples."""
        cfg = self.cfg
        n = cfg.prompts_per_round * (cfg.rounds if cfg.new_prompts else 1)
        source = self.recipe.data.train
        self.pool_rejected: list[str | None] = []
        if source is not None:
            records, _ = load_records(source, kind="auto", skip_invalid=self.recipe.data.skip_invalid, read=read_options(self.recipe.data, "train"))
            rows = [(r["prompt"], r.get("completion", r.get("chosen"))) for r in records]
            self.pool_rejected = [r.get("rejected") for r in records][:n]
            if len(rows) < n:
                raise ValueError(f"data.train has {len(rows)} rows; iterate needs prompts_per_round x rounds = {n} (or iterate.new_prompts=false)")
        elif self.builder.needs_pairs:  # offline pairs (HyPO): the task's labelled pairs
            records = task_rows(self.task, "pair", n, "train", self.recipe.task)
            rows = [(r["prompt"], r["chosen"]) for r in records]
            self.pool_rejected = [r["rejected"] for r in records][:n]
        elif self.builder.needs_real and not self.teacher_chosen:
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

    def sample_teacher(self, r: int, prompts: list[Any], first_index: int):
        """The teacher's completions of the prompts (``iterate.teacher.samples`` each; greedy, or sampled on streams
        of their own: job ids offset by 2^41), decoded with the teacher's own tokenizer."""
        t = self.cfg.teacher
        m = 1 if t.use == "chosen" else t.samples
        job_ids = [TEACHER_JOBS + (first_index + i) * m + j for i in range(len(prompts)) for j in range(m)]
        return generate(self.teacher, self.teacher_tokenizer, prompts, n=m, max_new_tokens=t.max_new_tokens or self.cfg.max_new_tokens,
                        temperature=t.temperature, top_p=t.top_p, greedy=t.greedy, batch_size=self.cfg.generation_batch_size,
                        seed=round_seed(self.seed, r), job_ids=job_ids, progress=self.progress)

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
        if self.pending is not None and self.pending["round"] == r:  # a resumed round: its examples were built before the stop
            pending, self.pending = self.pending, None
            return self._train_round(r, pending["built"], pending["info"], pending["step"], None)
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
        teacher: list[int] = []
        if cfg.teacher is not None:
            taught = self.sample_teacher(r, prompts, lo)
            if self.teacher_chosen:  # the teacher's completion is the prompt's given (chosen) completion
                rows = [(p, t.completion) for (p, _), t in zip(rows, taught)]
            else:  # the teacher's completions join the group after the policy's (and the opponent's)
                t = cfg.teacher.samples
                first = len(members[0]) if members else k
                members = [group + taught[i * t : (i + 1) * t] for i, group in enumerate(members)]
                teacher = list(range(first, first + t))
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
        real_roles: list[dict[int, list[str]]] = [{REAL: [], REAL_REJECTED: []} for _ in groups]  # the data's completions' roles
        for i, (prompt, real) in enumerate(rows):
            extra = {"preferences": judgement.preferences[i]} if judgement.preferences is not None else {}
            if opponents:
                extra["opponents"] = opponents
            if teacher:
                extra["teacher"] = teacher
            if self.pool_rejected:
                extra["real_rejected"] = self.pool_rejected[lo + i]
            if judgement.consistency is not None:
                extra["consistency"] = judgement.consistency[i]
            group = Group(prompt, groups[i], scores[i], real, extra)
            for item in self.builder(group, rng):
                value = None
                if kind == "win_rate" or (kind == "pair" and len(item) == 3):  # (index, win rate) / (chosen, rejected, preference)
                    item, value = item[:-1], float(item[-1])
                texts = [group.text(x) for x in item]
                if any(t is None or not str(t).strip() for t in texts):
                    continue
                if kind == "pair":
                    built.append({"prompt": prompt, "chosen": texts[0], "rejected": texts[1]})
                    if value is not None:  # P(chosen ≻ rejected): the soft label of the sppo pair losses
                        built[-1]["preference"] = value
                    if opponents:  # which side the opponent wrote (XPO's exploration term reads it)
                        built[-1]["opponent"] = 1 if item[0] in opponents else -1 if item[1] in opponents else 0
                    for x, role in zip(item, ("chosen", "rejected")):
                        (real_roles[i][x] if x < 0 else roles[i][x]).append(role)
                    if self.builder.own_sample:  # HyPO: the policy's fresh sample of the prompt, for the reverse-KL term
                        own = next((j for j in range(k) if groups[i][j].strip()), None)
                        if own is None:
                            built.pop()
                            continue
                        built[-1]["own"] = groups[i][own]
                        roles[i][own].append("kl")
                elif kind == "win_rate":
                    built.append({"prompt": prompt, "completion": texts[0], "win_rate": value})
                    roles[i][item[0]].append("win_rate")
                else:
                    built.append({"prompt": prompt, "completion": texts[0]})
                    roles[i][item[0]].append("sft")
        self._write_provenance(r, step0, lo, rows, members, scores, judgement, roles, real_roles, len(members[0]) - len(teacher) if members else k)
        judged = [s for g in scores for s in g if s is not None]
        info = {
            "round": r, "policy_step_start": step0, "prompts": len(prompts), "samples": sum(map(len, members)),
            "empty": empty, "judge": self.judge.name, **judgement.stats, "scored": len(judged),
            "score_mean": sum(judged) / len(judged) if judged else None, "builder": cfg.builder, "examples": len(built),
        }
        return self._train_round(r, built, info, step0, (t0, t1, t2))

    def _train_round(self, r: int, built: list[dict[str, Any]], info: dict[str, Any], step0: int, times: tuple[float, float, float] | None) -> dict[str, Any]:
        """Train on the round's examples (from the step the trainer is at), update the reference, evaluate, checkpoint."""
        cfg, trainer = self.cfg, self.trainer
        t2 = time.perf_counter()
        fit: dict[str, Any] = {}
        if r > 0 and cfg.reset_optimizer and trainer.optimizer is not None and trainer.step == step0:
            trainer.optimizer.state.clear()
        if len(built) >= trainer.cfg.batch_size:
            self._save_state({"round": r, "phase": "train", "step": step0}, built, info)
            examples = trainer.load_examples(built, "train")
            trainer.fit_shift = step0
            fit = self.extragradient(examples) if cfg.update == "extragradient" else trainer.fit(examples, steps=cfg.steps_per_round)
        else:
            say(f"round {r}: {len(built)} examples, fewer than train.batch_size={trainer.cfg.batch_size}: no training this round", trainer.strategy.is_main)
        t3 = time.perf_counter()
        self.update_reference()
        if cfg.save_rounds:
            trainer.save(self.rounds_dir / f"model-{r}")
        due = (r + 1) % cfg.eval_every == 0 or r == cfg.rounds - 1
        evaluation = self.evaluate(f"round-{r}") if due else None
        t0, t1, _ = times or (t2, t2, t2)
        stats = {
            **info, "policy_step_end": trainer.step, "steps": trainer.step - step0,
            "fit": {k2: v for k2, v in fit.items() if isinstance(v, (int, float))},
            "seconds": {"generate": t1 - t0, "judge": (times[2] - t1) if times else 0.0, "train": t3 - t2, "eval": time.perf_counter() - t3},
            "eval": evaluation,
        }
        if times is None:
            stats["resumed"] = True
        self.history.append(stats)
        gold = f", gold {evaluation['gold_reward']:+.3f}" if evaluation else ""
        say(f"round {r + 1}/{cfg.rounds}: {len(built)} examples, {stats['steps']} steps{gold}", trainer.strategy.is_main)
        self._write_summary()
        if cfg.checkpoint_rounds:
            self.checkpoint(r)
        return stats

    def update_reference(self) -> None:
        """``previous`` / ``soft``: ``refresh(policy, 1 or a)``; ``geometric`` / ``momentum``: the iterates advance."""
        cfg = self.cfg
        if self.reference is None or cfg.reference == "fixed":
            return
        if isinstance(self.reference, LogLinearReference):
            self.reference.advance(self.trainer.model)
        else:
            self.reference.refresh(self.trainer.model, 1.0 if cfg.reference == "previous" else cfg.reference_alpha)

    def extragradient(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """EGPO (Zhou et al. 2025, "Extragradient preference optimization"): ``θ_{t+½} = θ_t − η∇L(θ_t)``, then
        ``θ_{t+1} = θ_t − η∇L(θ_{t+½})``. The round's ``steps_per_round`` steps from ``θ_t`` give ``θ_{t+½}``; the
        optimizer's moments are put back to ``θ_t``'s and the same steps (same examples, same order) are taken from
        ``θ_{t+½}``, giving ``θ'``; the policy becomes ``θ_t + (θ' − θ_{t+½})``: the update computed at the
        extrapolated point, applied at ``θ_t`` (exact extragradient for one SGD step). Twice the optimizer steps."""
        trainer, steps = self.trainer, self.cfg.steps_per_round
        params = list(trainer.model.parameters())
        theta = [p.detach().clone() for p in params]
        moments = copy.deepcopy(trainer.optimizer.state_dict()) if trainer.optimizer is not None else None
        trainer.fit(examples, steps=steps)
        half = [p.detach().clone() for p in params]
        if moments is None:
            trainer.optimizer.state.clear()
        else:
            trainer.optimizer.load_state_dict(moments)
        fit = trainer.fit(examples, steps=steps)
        with torch.no_grad():
            for p, t, h in zip(params, theta, half):
                p.copy_(t + (p - h))
        return fit

    # ----------------------------------------------------------------------------------------------
    # round-level resume
    # ----------------------------------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.rounds_dir / "state.json"

    def _save_state(self, state: dict[str, Any], built: list[dict[str, Any]] | None = None, info: dict[str, Any] | None = None) -> None:
        if not (self.cfg.checkpoint_rounds and self.trainer.strategy.is_main):
            return
        if built is not None:
            with open(self.rounds_dir / f"examples-{state['round']}.jsonl", "w") as f:
                f.write(json.dumps({"info": info}, default=str) + "\n")
                for row in built:
                    f.write(json.dumps(row, default=str) + "\n")
        full = {**state, "history": self.history, "start_eval": self.start_eval}
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(full, indent=1, default=str))
        tmp.replace(self._state_path())

    def checkpoint(self, r: int) -> None:
        """After round ``r``: the trainer's resumable checkpoint (when it has trained since the last), the
        reference's weights and the loop's state (``rounds/state.json``: the next round, the step, the history)."""
        trainer = self.trainer
        if trainer.policy is not None and trainer.step != self.checkpointed:
            trainer.save_checkpoint({"epoch": 0.0, "iterate_round": r})
            self.checkpointed = trainer.step
        if self.reference is not None and trainer.strategy.is_main:
            save_reference(self.reference, self.rounds_dir / "reference.safetensors")
        self._save_state({"round": r + 1, "phase": "start", "step": trainer.step})

    def _restore(self) -> None:
        """A resumed run (``train.resume``): the trainer holds the checkpoint's policy; read the loop's state,
        the reference's weights and, when the run stopped inside a round's training, that round's examples."""
        path = self._state_path()
        if not path.exists():
            raise ValueError(f"train.resume: {self.trainer.resumed_from} has no iterate state ({path}); it is not a checkpoint of alignkit iterate")
        state = json.loads(path.read_text())
        step = int(read_state(self.trainer.resumed_from)["step"])
        if step < state["step"] or (state["phase"] == "start" and step != state["step"]):
            raise ValueError(f"train.resume: checkpoint step {step} does not match the iterate state (round {state['round']}, {state['phase']} at step {state['step']})")
        if state["phase"] == "train" and step != state["step"] and self.cfg.update == "extragradient":
            raise ValueError(f"an extragradient round resumes from its start: pass train.resume={self.trainer.run_dir}/checkpoint-{state['step']}")
        self.history, self.start_eval = state["history"], state["start_eval"]
        self.first_round = state["round"]
        self.checkpointed = step
        if self.reference is not None:
            load_reference(self.reference, self.rounds_dir / "reference.safetensors")
            if self.cfg.reference == "fixed" and self.start_model is not None:
                copy_weights(self.reference.model, self.start_model)
        if state["phase"] == "train":
            lines = (self.rounds_dir / f"examples-{state['round']}.jsonl").read_text().splitlines()
            self.pending = {"round": state["round"], "step": state["step"], "info": json.loads(lines[0])["info"], "built": [json.loads(x) for x in lines[1:]]}
        say(f"resumed at round {self.first_round + 1} (trainer step {step})", self.trainer.strategy.is_main)

    def _write_provenance(self, r, step0, lo, rows, members, scores, judgement, roles, real_roles, first_teacher) -> None:
        """One row per sample; ``source``: policy, the opponent (reference / mixture), teacher, or the data's (data,
        data_rejected; with ``iterate.teacher.use: chosen`` the prompt's given completion is the teacher's)."""
        if not self.trainer.strategy.is_main:
            return
        k = self.cfg.samples_per_prompt
        given = "teacher" if self.teacher_chosen else "data"
        with open(self.rounds_dir / f"round-{r}.jsonl", "w") as f:
            for i, (prompt, real) in enumerate(rows):
                data = [(real, given, REAL)] + ([(self.pool_rejected[lo + i], "data_rejected", REAL_REJECTED)] if self.pool_rejected else [])
                for text, source, index in data:
                    if text is not None:
                        f.write(json.dumps({"round": r, "policy_step": step0, "prompt_index": lo + i, "sample": None, "source": source, "prompt": prompt,
                                            "completion": text, "used_as": real_roles[i][index]}) + "\n")
                for j, s in enumerate(members[i]):
                    source = "policy" if j < k else self.cfg.opponent if j < first_teacher else "teacher"
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
            if not self.resumed:
                self.start_eval = self.evaluate("start")
                if self.start_eval:
                    say(f"start: gold {self.start_eval['gold_reward']:+.3f}", self.trainer.strategy.is_main)
            for r in range(self.first_round, self.cfg.rounds):
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

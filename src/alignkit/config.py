"""Typed recipe configuration: YAML files + dotted command-line overrides, checked before any work.

A recipe is a YAML file whose keys mirror :class:`Recipe`. ``alignkit train recipe.yaml train.lr=3e-4
dpo.beta=0.2`` applies overrides on top (values are parsed as YAML: ``true``, ``1e-4``, ``[a, b]``).
An unknown key or a bad value raises :class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .models.tiny import TinyModelConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(Section):
    """LoRA adapters through ``peft`` (``model.lora``); the base weights stay frozen."""

    r: int = Field(8, gt=0)
    alpha: int = 16
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class ModelConfig(Section):
    """The policy to start from: a local ``transformers`` checkpoint (``path``) or a tiny model built on
    the task's text (``tiny``, used when ``path`` is not set)."""

    path: str | None = None
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    dtype: Literal["float32", "bfloat16"] = "float32"
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    lora: LoraConfig | None = None


class TaskConfig(Section):
    """A built-in task that generates data (when ``data.train`` is not a file) and scores samples."""

    name: Literal["sentiment", "arithmetic", "multi_objective", "pluralistic", "intransitive"] = "sentiment"
    seed: int = 0
    level: int = Field(1, ge=0, le=3, description="arithmetic difficulty (0-3)")
    n_train: int = Field(2048, gt=0)
    n_eval: int = Field(256, ge=0)
    label_temperature: float = Field(0.25, gt=0)
    label_noise: float = Field(0.0, ge=0, le=1, description="probability that a generated pair's label is flipped")
    objective_weights: tuple[float, float] | None = Field(None, description="multi_objective: (w_sentiment, w_brevity); default (0.5, 0.5)")
    minority_share: float = Field(0.2, gt=0, lt=1, description="pluralistic: share of the minority group (likes negative reviews)")


class DataConfig(Section):
    """Training data. ``train``/``eval`` are files (.jsonl, .json, .parquet, .csv) or saved dataset
    folders; when ``train`` is unset the task generates it."""

    train: str | None = None
    eval: str | None = None
    kind: Literal["auto", "sft", "pair", "unpaired", "ranked", "prompt"] = "auto"
    max_length: int = Field(256, gt=1)
    truncation: Literal["error", "left", "right", "skip"] = "error"
    skip_invalid: bool = False


class TrainConfig(Section):
    """The training loop (shared by every algorithm)."""

    output_dir: str = "runs/{algorithm}"
    seed: int = 0
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    batch_size: int = Field(32, gt=0, description="examples per optimizer step, over all processes")
    micro_batch_size: int | None = Field(None, gt=0, description="examples per forward on one process")
    micro_batch_tokens: int | None = Field(None, gt=0, description="length-bucketed micro-batches of at most this many padded tokens (replaces micro_batch_size)")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    distributed: Literal["ddp", "fsdp2"] = Field("ddp", description="with several processes: DDP (replicated) or FSDP2 (sharded parameters, gradients, optimizer state)")
    log_every: int = Field(1, gt=0)
    eval_every: int | None = Field(None, gt=0)
    save_every: int | None = Field(None, gt=0)
    save_total_limit: int | None = Field(2, gt=0)
    save_final: bool = True
    resume: bool | str = Field(False, description="true: latest checkpoint in output_dir; or a checkpoint path")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    progress: bool = True


class SFTConfig(Section):
    """Supervised fine-tuning: token-mean negative log-likelihood of completion tokens."""


class VLLMConfig(Section):
    """The vLLM engine (``rl.vllm``), used when ``rl.generation_backend`` resolves to ``vllm``."""

    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="share of the GPU vLLM may take (weights + KV cache); training shares the GPU")
    kv_cache_gb: float | None = Field(None, gt=0, description="KV-cache size in GiB; overrides gpu_memory_utilization; on CPU the default is 1 GiB (or VLLM_CPU_KVCACHE_SPACE)")
    max_model_len: int | None = Field(None, gt=0, description="longest prompt + completion; default: the model's max_position_embeddings")
    enforce_eager: bool = Field(True, description="no CUDA graphs / compilation: fast start")
    enable_prefix_caching: bool = Field(True, description="a group's samples share their prompt's KV blocks")


class RLConfig(Section):
    """Online RL (``algorithm: rl``): rollout, reward, advantage estimator, policy loss, KL."""

    estimator: Literal["grpo", "dr_grpo", "rloo", "remax", "reinforce", "reinforce_pp", "reinforce_pp_baseline", "ppo", "p3o", "copg"] = "grpo"
    policy_loss: Literal["ppo_clip", "cispo", "gspo", "reinforce", "p3o"] = "ppo_clip"
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"] = "token_mean"
    reward: Any = Field("gold", description="gold (the task's gold reward), a reward model folder, module:function, or a reward-source mapping")
    group_size: int = Field(4, gt=0, description="samples per prompt")
    max_new_tokens: int = Field(32, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    generation_batch_size: int | None = Field(None, gt=0, description="rows decoded together; default: the whole rollout")
    generation_backend: Literal["auto", "alignkit", "hf", "vllm"] = Field(
        "auto", description="who samples rollouts: vllm (weights synced after every update), alignkit's KV-cache engine, or model.generate; auto = vllm when installed and the policy is on a CUDA GPU, else alignkit")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    std: Literal["group", "batch", "none"] = Field("group", description="GRPO advantage scale")
    moving_baseline: bool = Field(True, description="REINFORCE: subtract a moving average of the reward")
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 loads no reference model")
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = "k3"
    kl_in: Literal["loss", "reward"] = "loss"
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.2, ge=0, description="DAPO clip-higher: raise above clip_low")
    dual_clip: float | None = Field(None, gt=1)
    epochs: int = Field(1, gt=0, description="passes over each rollout (PPO epochs)")
    mini_batches: int = Field(1, gt=0, description="optimizer steps per pass")
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose rewards are all equal")
    reward_transforms: list[dict[str, Any]] = Field(default_factory=list, description="PPO-max-style reward normalisation, applied in order to each rollout's rewards, e.g. [{name: clip, low: -2, high: 2}, {name: whiten}] (names: alignkit.rewards.transforms.TRANSFORMS)")
    overlong: Literal["none", "filter", "shape"] = "none"
    overlong_buffer: int = Field(8, ge=0)
    overlong_penalty: float = Field(1.0, ge=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    vf_coef: float = Field(0.1, ge=0)
    value_clip: float | None = 0.2
    whiten_advantages: bool = True
    eval_samples: int = Field(1, gt=0, description="samples per eval prompt")
    share_prompts: bool = Field(True, description="compute each prompt once for its whole group in the update (packed rows); PPO keeps padded rows")
    skip_zero_advantage: bool = Field(True, description="leave samples whose advantage is exactly 0 (e.g. zero-variance groups) out of the update's forward/backward; their tokens stay in the mean's denominator, so the update is the same (outcome estimators without a KL loss term)")
    behavior: Literal["policy", "reference"] = Field("policy", description="who samples the rollouts; 'reference' gives CoPG's off-policy setting")
    macro_len: int | None = Field(None, gt=0, description="MA-RLHF: PPO's GAE over fixed-length macro actions of this many tokens")
    dense_reward_model: str | None = Field(None, description="RTO: a DPO-trained policy whose per-token log-ratio to the reference is a dense reward (PPO)")
    dense_reward_beta: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _check_rl(self) -> "RLConfig":
        if self.estimator in ("p3o", "copg") and self.group_size % 2:
            raise ValueError(f"rl.group_size must be even for rl.estimator={self.estimator} (samples are paired)")
        if self.estimator == "copg" and self.beta <= 0:
            raise ValueError("rl.estimator=copg needs rl.beta > 0 (its reward is r - beta * log pi/pi_ref)")
        from .rewards.transforms import TRANSFORMS

        for i, t in enumerate(self.reward_transforms):
            if t.get("name") not in TRANSFORMS:
                raise ValueError(f"rl.reward_transforms[{i}].name: got {t.get('name')!r}; allowed: {', '.join(TRANSFORMS)}")
        if self.behavior == "reference" and self.estimator != "copg":
            raise ValueError("rl.behavior=reference (off-policy samples) is for rl.estimator=copg, which needs no importance weights")
        if (self.macro_len or self.dense_reward_model) and self.estimator != "ppo":
            raise ValueError("rl.macro_len and rl.dense_reward_model apply to rl.estimator=ppo")
        return self


class DPOConfig(Section):
    """Direct preference optimisation (and, through ``loss``, any pairwise loss of
    :func:`alignkit.objectives.preference.pairwise_loss`)."""

    loss: str = "dpo"
    beta: float = Field(0.1, gt=0)
    params: dict[str, Any] = Field(default_factory=dict, description="extra parameters of the loss, e.g. label_smoothing")
    reference: Literal["cache", "model"] = Field("cache", description="cache: reference log-probs computed once before training; model: a frozen copy run every step")
    packing: bool = Field(True, description="pack each pair as one prefix-shared row [prompt, chosen, rejected]; false: padded 2B rows")
    pack_tokens: int | None = Field(None, gt=0, description="with packing, put several pairs in one row of at most this many tokens")
    mix: list[dict[str, Any]] = Field(default_factory=list, description="MPO-style mixture: [{loss: dpo, weight: 1.0, params: {}}, ...] replaces `loss`")
    wpo: bool = Field(False, description="WPO: weight each pair by exp of its length-normalised policy log-probs (detached)")
    ld_alpha: float | None = Field(None, ge=0, le=1, description="LD-DPO: weight of completion tokens beyond the pair's shared length")
    tdpo_alpha: float | None = Field(None, gt=0, description="TDPO2's alpha (dpo.loss: tdpo2); tdpo1 uses 1")
    reference_update: Literal["none", "soft", "hard"] = Field("none", description="TR-DPO: refresh the reference model during training")
    reference_update_every: int = Field(32, gt=0, description="TR-DPO: steps between reference refreshes")
    reference_update_alpha: float = Field(0.6, ge=0, le=1, description="TR-DPO soft update: ref <- alpha * policy + (1 - alpha) * ref")
    curriculum: bool = Field(False, description="Curry-DPO: with data.kind=ranked, train on ranked pairs easy to hard (largest score gap first), unshuffled")

    @model_validator(mode="after")
    def _check_dpo(self) -> "DPOConfig":
        if self.loss in ("tdpo1", "tdpo2") and self.reference != "model":
            raise ValueError("dpo.loss=tdpo1/tdpo2 needs dpo.reference=model (its KL uses the reference's full distributions every step)")
        if self.reference_update != "none" and self.reference != "model":
            raise ValueError("dpo.reference_update (TR-DPO) needs dpo.reference=model")
        for i, item in enumerate(self.mix):
            unknown = set(item) - {"loss", "weight", "params"}
            if "loss" not in item or unknown:
                raise ValueError(f"dpo.mix[{i}]: expected keys loss, weight, params (got {sorted(item)})")
        return self


class UnpairedConfig(Section):
    """Unpaired binary feedback (``algorithm: kto``): KTO, BCO or APO-zero."""

    loss: Literal["kto", "bco", "apo_zero_unpaired"] = "kto"
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)
    bco_momentum: float | None = Field(None, gt=0, le=1, description="BCO reward shift: None = cumulative mean")


class ListwiseConfig(Section):
    """Rankings (``algorithm: pro``): Plackett–Luce over the ranked completions."""

    loss: Literal["pro"] = "pro"
    beta: float = Field(1.0, gt=0)
    sft_weight: float = Field(0.0, ge=0, description="weight of the best completion's NLL")


class RewardConfig(Section):
    """Reward-model training (``algorithm: reward``): Bradley–Terry (+ margin, centring), ensembles,
    ratings regression on ranked data, a pairwise preference model, a multi-objective (ArmoRM-style
    gated) model, or a process (per-step) reward model."""

    type: Literal["scalar", "preference", "multi_objective", "process"] = "scalar"
    loss: Literal["bradley_terry", "hinge"] = "bradley_terry"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    margin: bool = Field(False, description="subtract the pair's 'margin' field inside the BT sigmoid")
    margin_scale: float = 1.0
    centering: float = Field(0.0, ge=0, description="coefficient of (r_c + r_r)^2")
    regression: float = Field(0.0, ge=0, description="weight of the squared error to the scores of ranked data")
    ensemble: int = Field(1, ge=1, description="members trained side by side")
    ensemble_init: Literal["head", "all"] = Field("head", description="what each member re-draws with its own seed")
    bootstrap: bool = Field(True, description="ensemble members weigh pairs by their own Poisson(1) counts")
    attributes: list[str] | None = Field(None, description="multi_objective: attribute names, one regression head each (default on the sentiment task: sentiment, verbosity)")
    gate_hidden: int = Field(0, ge=0, description="multi_objective: hidden width of the gating MLP (0: one linear layer)")
    gate_weight: float = Field(1.0, ge=0, description="multi_objective: weight of the gating Bradley–Terry loss on pair rows")
    gate_detach: bool = Field(True, description="multi_objective: the BT loss sees the heads' scores as constants (heads learn only from ratings)")
    gate_trains_body: bool = Field(False, description="multi_objective: the BT loss also trains the body through the prompt representation the gate reads")
    step_split: str | None = Field(None, description="process: regex; a completion is cut after every match into steps (default newline; the sentiment task cuts before 'and'/'but')")
    step_aggregate: Literal["min", "prod", "mean", "last"] = Field("min", description="process: how score() reduces per-step probabilities")


ALGORITHMS = ("sft", "dpo", "kto", "pro", "reward", "rl")


class Recipe(Section):
    algorithm: Literal["sft", "dpo", "kto", "pro", "reward", "rl"]
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    unpaired: UnpairedConfig = Field(default_factory=UnpairedConfig)
    listwise: ListwiseConfig = Field(default_factory=ListwiseConfig)

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        t = self.train
        if t.distributed == "fsdp2" and (self.algorithm == "rl" or self.model.lora is not None):
            raise ValueError("train.distributed=fsdp2 supports full-model offline training (sft, dpo, kto, pro, reward) for now; use ddp for rl or LoRA")
        if t.micro_batch_size is not None and t.batch_size % t.micro_batch_size:
            raise ValueError(f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size ({t.micro_batch_size})")
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir.format(algorithm=self.algorithm))


class ConfigError(ValueError):
    """A recipe problem; the message names the key and what is allowed."""


def _allowed(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names of the section that ``path`` points into."""
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        candidates = [annotation, *get_args(annotation)]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _format(error: ValidationError, source: str) -> str:
    lines = []
    for e in error.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<recipe>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed(Recipe, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"unknown key; allowed: {', '.join(allowed)}" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        elif e["type"] == "literal_error":
            msg = f"got {e['input']!r}; {e['msg'].replace('Input should be', 'allowed:')}"
        else:
            msg = f"{e['msg']} (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else e["msg"]
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.sub=value")
    key, value = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value) if value != "" else None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def load_recipe(source: str | Path | dict | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (YAML file path or dict), apply dotted overrides, validate."""
    if source is None:
        data, name = {}, "<overrides>"
    elif isinstance(source, dict):
        data, name = dict(source), "<dict>"
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"{path}: no such recipe file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections (algorithm, model, data, train, ...)")
        name = str(path)
    data = apply_overrides(data, list(overrides or []))
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, name)) from None


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))

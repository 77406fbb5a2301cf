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


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(BaseModel):
    """Shape of a tiny model built from scratch."""

    model_config = ConfigDict(extra="forbid")

    arch: Literal["llama", "qwen2"] = Field("llama", description="transformers architecture: llama (LlamaConfig) or qwen2 (Qwen2Config)")
    hidden_size: int = Field(64, description="width of the hidden states and token embeddings (tied with the output head)")
    num_layers: int = Field(2, description="number of decoder layers")
    num_heads: int = Field(4, description="attention heads, as many key/value heads (no grouped-query attention)")
    intermediate_size: int = Field(256, description="inner width of each layer's MLP")
    vocab_size: int = Field(512, description="target vocabulary size of the byte-level BPE tokenizer trained on the task's text; the model's embeddings match the tokenizer")
    max_position_embeddings: int = Field(256, description="longest sequence in tokens the model config allows (vLLM's default max_model_len)")
    seed: int = Field(0, description="torch seed of the random weight initialisation")


class LoraConfig(Section):
    """LoRA adapters through ``peft`` (``model.lora``); the base weights stay frozen."""

    r: int = Field(8, gt=0, description="rank of the LoRA update matrices A, B")
    alpha: int = Field(16, description="scale numerator of the LoRA update (peft lora_alpha): B A is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout probability on the input of the LoRA branch (peft lora_dropout)")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="names of the modules to adapt, or all-linear: every linear layer except the output head (peft target_modules)")


class ModelConfig(Section):
    """The policy to start from: a local ``transformers`` checkpoint (``path``) or a tiny model built on
    the task's text (``tiny``, used when ``path`` is not set)."""

    path: str | None = Field(None, description="local transformers checkpoint folder of the starting policy; null: build a tiny model (model.tiny) in output_dir/initial-model")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="shape of the tiny model built from scratch when path is not set")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="dtype the model weights are loaded in")
    trust_remote_code: bool = Field(False, description="let transformers run modelling/tokenizer code shipped with the checkpoint (off: such checkpoints are refused)")
    attn_implementation: str | None = Field(None, description="attention kernel for from_pretrained, e.g. eager, sdpa, flash_attention_2 (no packed rows); null: transformers' default")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters (peft) on frozen base weights; null: train every weight")


class TaskConfig(Section):
    """A built-in task that generates data (when ``data.train`` is not a file) and scores samples."""

    name: Literal["sentiment", "arithmetic", "multi_objective", "pluralistic", "intransitive"] = Field(
        "sentiment", description="built-in task: sentiment (controlled sentiment), arithmetic (verifiable sums), multi_objective (sentiment vs brevity), pluralistic (user groups), intransitive")
    seed: int = Field(0, description="seed of the task's generator: prompts, sampled completions and labels")
    level: int = Field(1, ge=0, le=3, description="arithmetic difficulty (0-3)")
    n_train: int = Field(2048, gt=0, description="training rows generated when data.train is unset (pairs, prompts, ... of the algorithm's data kind)")
    n_eval: int = Field(256, ge=0, description="held-out rows generated for evaluation when data.train is unset; 0: no eval set")
    label_temperature: float = Field(0.25, gt=0, description="temperature T of generated labels: Bradley–Terry P(a over b) = sigmoid((r_a - r_b) / T), thumbs up sigmoid(r / T); lower: less noise")
    label_noise: float = Field(0.0, ge=0, le=1, description="probability that a generated pair's label is flipped")
    objective_weights: tuple[float, float] | None = Field(None, description="multi_objective: (w_sentiment, w_brevity); default (0.5, 0.5)")
    minority_share: float = Field(0.2, gt=0, lt=1, description="pluralistic: share of the minority group (likes negative reviews)")


class DataConfig(Section):
    """Training data. ``train``/``eval`` are files (.jsonl, .json, .parquet, .csv) or saved dataset
    folders; when ``train`` is unset the task generates it."""

    train: str | None = Field(None, description="training data: a .jsonl, .json, .parquet or .csv file or a saved dataset folder; null: generated by the task")
    eval: str | None = Field(None, description="eval data file or folder; null: task-generated (task.n_eval rows) when train is too, else no eval set")
    kind: Literal["auto", "sft", "pair", "unpaired", "ranked", "prompt"] = Field("auto", description="record kind of the rows; auto: the algorithm's own kind (ranked also feeds dpo and reward)")
    max_length: int = Field(256, gt=1, description="most tokens in a row: prompt + completion (the longest completion of a pair or ranking)")
    truncation: Literal["error", "left", "right", "skip"] = Field(
        "error", description="a row over max_length: error raises; left drops prompt tokens from the start; right cuts the completion's end; skip leaves it out")
    skip_invalid: bool = Field(False, description="leave out rows with missing or bad fields and report how many (skipped-<split>.txt) instead of raising on the first")


class TrainConfig(Section):
    """The training loop (shared by every algorithm)."""

    output_dir: str = Field("runs/{algorithm}", description="run folder (checkpoints, metrics.jsonl, final model); {algorithm} is replaced by the algorithm's name")
    seed: int = Field(0, description="seed of the python/torch/numpy generators, the data order (permutation per epoch) and rollout sampling")
    epochs: float = Field(1.0, gt=0, description="passes over the training data (may be fractional); ignored when max_steps is set")
    max_steps: int | None = Field(None, gt=0, description="training steps (batches of batch_size) to run; overrides epochs")
    batch_size: int = Field(32, gt=0, description="examples per optimizer step, over all processes")
    micro_batch_size: int | None = Field(None, gt=0, description="examples per forward on one process")
    micro_batch_tokens: int | None = Field(None, gt=0, description="length-bucketed micro-batches of at most this many padded tokens (replaces micro_batch_size)")
    lr: float = Field(1e-4, gt=0, description="peak AdamW learning rate (reached after warmup)")
    weight_decay: float = Field(0.0, ge=0, description="decoupled (AdamW) weight decay of matrix parameters; biases and norm weights get none")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="(beta1, beta2) of AdamW: decay rates of the gradient's first and second moment averages")
    adam_eps: float = Field(1e-8, description="epsilon added to the AdamW update's denominator")
    scheduler: Literal["constant", "linear", "cosine"] = Field("linear", description="learning rate after warmup: constant, linear decay to 0, or cosine decay to 0 at the last update")
    warmup_steps: int | None = Field(None, ge=0, description="optimizer updates of linear learning-rate warmup; overrides warmup_ratio")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="warmup as a share of all optimizer updates (used when warmup_steps is null)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm to this before each update; null: no clipping")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: forward passes and losses under bfloat16 autocast; fp32: no autocast")
    distributed: Literal["ddp", "fsdp2"] = Field("ddp", description="with several processes: DDP (replicated) or FSDP2 (sharded parameters, gradients, optimizer state)")
    log_every: int = Field(1, gt=0, description="steps between metrics records (metrics.jsonl and trackers)")
    eval_every: int | None = Field(None, gt=0, description="steps between evaluations on the eval set (also at step 0 and the last step); null: no evaluation")
    save_every: int | None = Field(None, gt=0, description="steps between resumable checkpoints (output_dir/checkpoint-<step>); null: none")
    save_total_limit: int | None = Field(2, gt=0, description="checkpoints kept: older ones are deleted; null: keep all")
    save_final: bool = Field(True, description="save the trained policy to output_dir/final (LoRA: the adapter, plus the merged model in final-merged)")
    resume: bool | str = Field(False, description="true: latest checkpoint in output_dir; or a checkpoint path")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list, description="trackers that also receive the metrics (metrics.jsonl is always written)")
    progress: bool = Field(True, description="show a progress bar (main process only)")


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

    estimator: Literal["grpo", "dr_grpo", "rloo", "remax", "reinforce", "reinforce_pp", "reinforce_pp_baseline", "ppo", "p3o", "copg"] = Field(
        "grpo", description="grpo to reinforce_pp_baseline: advantages from sequence rewards (remax: greedy baseline); ppo: GAE with a learned critic; p3o, copg: pairs of samples")
    policy_loss: Literal["ppo_clip", "cispo", "gspo", "reinforce", "p3o"] = Field(
        "ppo_clip", description="ppo_clip: clipped ratio; cispo: clipped detached IS weight; gspo: sequence ratio (paper's clip range); reinforce: -A log p; p3o: trajectory ratio")
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"] = Field(
        "token_mean", description="token losses to a scalar: mean over all tokens (DAPO), per-sequence mean (GRPO), sum, or sum / max_new_tokens (Dr. GRPO), then mean over sequences")
    reward: Any = Field("gold", description="gold (the task's gold reward), a reward model folder, module:function, or a reward-source mapping")
    group_size: int = Field(4, gt=0, description="samples per prompt")
    max_new_tokens: int = Field(32, gt=0, description="most tokens sampled per completion")
    temperature: float = Field(1.0, gt=0, description="sampling temperature; the update scores log-probs at the same temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: draw from the most likely tokens holding this probability mass (1: no truncation)")
    generation_batch_size: int | None = Field(None, gt=0, description="rows decoded together; default: the whole rollout")
    generation_backend: Literal["auto", "alignkit", "hf", "vllm"] = Field(
        "auto", description="who samples rollouts: vllm (weights synced after every update), alignkit's KV-cache engine, or model.generate; auto = vllm when installed and the policy is on a CUDA GPU, else alignkit")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="vLLM engine settings, used when generation_backend resolves to vllm")
    std: Literal["group", "batch", "none"] = Field("group", description="GRPO advantage scale")
    moving_baseline: bool = Field(True, description="REINFORCE: subtract a moving average of the reward")
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 loads no reference model")
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = Field("k3", description="per-token KL estimate, d = log pi - log pi_ref (Schulman): k1 d, k2 d^2 / 2, k3 exp(-d) + d - 1 (GRPO; unbiased, >= 0), abs: absolute d")
    kl_in: Literal["loss", "reward"] = Field("loss", description="where the beta KL goes: loss adds a KL term (GRPO); reward subtracts it from rewards (PPO per-token; others per sample, before advantages)")
    clip_low: float = Field(0.2, ge=0, description="PPO clip: lower ratio bound 1 - clip_low (ppo_clip, p3o)")
    clip_high: float = Field(0.2, ge=0, description="DAPO clip-higher: raise above clip_low")
    dual_clip: float | None = Field(None, gt=1, description="ppo_clip dual clip (Ye et al. 2020): for negative advantages the loss is capped at -c A; null: off")
    epochs: int = Field(1, gt=0, description="passes over each rollout (PPO epochs)")
    mini_batches: int = Field(1, gt=0, description="optimizer steps per pass")
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose rewards are all equal")
    reward_transforms: list[dict[str, Any]] = Field(default_factory=list, description="PPO-max-style reward normalisation, applied in order to each rollout's rewards, e.g. [{name: clip, low: -2, high: 2}, {name: whiten}] (names: alignkit.rewards.transforms.TRANSFORMS)")
    overlong: Literal["none", "filter", "shape"] = Field("none", description="DAPO overlong handling: filter drops completions that reach max_new_tokens without stopping; shape applies the soft length penalty")
    overlong_buffer: int = Field(8, ge=0, description="DAPO overlong shaping: the last this many tokens of max_new_tokens, over which the penalty ramps up linearly")
    overlong_penalty: float = Field(1.0, ge=0, description="DAPO overlong shaping: reward subtracted from a completion of max_new_tokens tokens (less within the buffer)")
    gamma: float = Field(1.0, ge=0, le=1, description="PPO: GAE discount factor per token (per macro action with macro_len)")
    lam: float = Field(0.95, ge=0, le=1, description="PPO: GAE lambda (1: Monte-Carlo returns minus values, 0: one-step TD errors)")
    vf_coef: float = Field(0.1, ge=0, description="PPO: weight of the critic's value loss in the total loss")
    value_clip: float | None = Field(0.2, description="PPO value clipping: the larger of the plain error and that of values kept within this of the rollout's; null: plain squared error")
    whiten_advantages: bool = Field(True, description="PPO: normalise GAE advantages to mean 0, std 1 over the rollout's completion tokens")
    eval_samples: int = Field(1, gt=0, description="samples per eval prompt")
    share_prompts: bool = Field(True, description="compute each prompt once for its whole group in the update (packed rows); PPO keeps padded rows")
    skip_zero_advantage: bool = Field(True, description="leave samples whose advantage is exactly 0 (e.g. zero-variance groups) out of the update's forward/backward; their tokens stay in the mean's denominator, so the update is the same (outcome estimators without a KL loss term)")
    behavior: Literal["policy", "reference"] = Field("policy", description="who samples the rollouts; 'reference' gives CoPG's off-policy setting")
    macro_len: int | None = Field(None, gt=0, description="MA-RLHF: PPO's GAE over fixed-length macro actions of this many tokens")
    dense_reward_model: str | None = Field(None, description="RTO: a DPO-trained policy whose per-token log-ratio to the reference is a dense reward (PPO)")
    dense_reward_beta: float = Field(0.1, ge=0, description="RTO: coefficient of the dense reward log pi_dpo - log pi_ref added to every token's reward")

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

    loss: str = Field("dpo", description="pairwise loss: a name in alignkit.objectives.preference.PAIRWISE_LOSSES (dpo, ipo, simpo, orpo, ...) or tdpo1, tdpo2")
    beta: float = Field(0.1, gt=0, description="the loss's beta: inverse temperature on the log-ratios (DPO: larger keeps the policy closer to the reference); ORPO: weight of the odds-ratio term")
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

    loss: Literal["kto", "bco", "apo_zero_unpaired"] = Field("kto", description="kto: KTO with a mismatched-pair reference point; bco: binary classifier with a running reward shift; apo_zero_unpaired: APO-zero")
    beta: float = Field(0.1, gt=0, description="inverse temperature on the policy/reference log-ratio (the implicit reward)")
    desirable_weight: float = Field(1.0, gt=0, description="KTO lambda_D: weight of the loss of desirable (thumbs-up) examples")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO lambda_U: weight of the loss of undesirable (thumbs-down) examples")
    bco_momentum: float | None = Field(None, gt=0, le=1, description="BCO reward shift: None = cumulative mean")


class ListwiseConfig(Section):
    """Rankings (``algorithm: pro``): Plackett–Luce over the ranked completions."""

    loss: Literal["pro"] = Field("pro", description="pro: PRO, Plackett–Luce over the ranking of length-normalised policy log-probs")
    beta: float = Field(1.0, gt=0, description="inverse temperature on the length-normalised log-probs (1: the PRO paper)")
    sft_weight: float = Field(0.0, ge=0, description="weight of the best completion's NLL")


class RewardConfig(Section):
    """Reward-model training (``algorithm: reward``): Bradley–Terry (+ margin, centring), ensembles,
    ratings regression on ranked data, a pairwise preference model, a multi-objective (ArmoRM-style
    gated) model, or a process (per-step) reward model."""

    type: Literal["scalar", "preference", "multi_objective", "process"] = Field(
        "scalar", description="scalar: one score per completion; preference: PairRM-style pair model; multi_objective: ArmoRM-style heads + gate; process: per-step PRM")
    loss: Literal["bradley_terry", "hinge"] = Field("bradley_terry", description="scalar pair loss: bradley_terry -log sigmoid(r_c - r_r - m), or hinge max(0, m + 1 - (r_c - r_r)); m: the margin")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="bradley_terry: share eps of the loss given to the swapped label, (1 - eps) BT + eps BT(r_r, r_c)")
    margin: bool = Field(False, description="subtract the pair's 'margin' field inside the BT sigmoid")
    margin_scale: float = Field(1.0, description="factor on the pair's margin field when reward.margin is on")
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


# --------------------------------------------------------------------------------------------------
# the options reference (``alignkit options``, docs/options.md): read off the typed sections above
# --------------------------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _sections(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    """(dotted name, section class) of ``model``'s sub-sections, depth first, in declaration order."""
    import typing

    out = []
    for name, field in model.model_fields.items():
        for candidate in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                dotted = f"{prefix}.{name}" if prefix else name
                out += [(dotted, candidate), *_sections(candidate, dotted)]
    return out


def options_reference(section: str | None = None) -> str:
    """Every recipe option (key, type, default, meaning) as Markdown, for one section (``"rl"``,
    ``"rl.vllm"``) or all of them; raises ConfigError for an unknown section."""
    sections = _sections(Recipe, "")
    if section is not None:
        chosen = [s for s in sections if s[0] == section or s[0].startswith(section + ".")]
        if not chosen:
            names = [s[0] for s in sections]
            hint = difflib.get_close_matches(section, names, n=1)
            raise ConfigError(f"no recipe section '{section}'" + (f" (did you mean '{hint[0]}'?)" if hint else "") + f"; sections: {', '.join(names)}")
        sections = chosen
    lines = []
    if section is None:
        lines += ["# Recipe options", "", "Every key a recipe (YAML) or a dotted override (`alignkit train recipe.yaml rl.beta=0.1`)",
                  "can set. Generated from `alignkit/config.py` by `alignkit options` (a test keeps this file in step).", "",
                  f"`algorithm` (top level): one of {', '.join(f'`{a}`' for a in ALGORITHMS)}.", ""]
    for name, model in sections:
        doc = " ".join((model.__doc__ or "").split())
        lines += [f"## `{name}`", "", *( [doc, ""] if doc else []), "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, field in model.model_fields.items():
            kind = _type_name(field.annotation)
            if kind == "section":
                default = f"see `{name}.{key}`"
            elif "section" in kind.split(" or "):
                default = f"`{field.default}` (a section: `{name}.{key}`)"
            elif field.default_factory is not None:
                default = f"`{field.default_factory()}`"
            else:
                default = f"`{field.default}`"
            meaning = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {kind} | {default} | {meaning} |")
        lines.append("")
    return "\n".join(lines)

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

    @model_validator(mode="after")
    def _check_shape(self) -> "TinyModelConfig":
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.tiny.{key} must be a positive integer (got {getattr(self, key)})")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.tiny.hidden_size ({self.hidden_size}) must be a multiple of model.tiny.num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"model.tiny: the head size hidden_size / num_heads ({self.hidden_size // self.num_heads}) must be even (rotary position embeddings)")
        if self.vocab_size < TINY_MIN_VOCAB:
            raise ValueError(f"model.tiny.vocab_size ({self.vocab_size}) must be at least {TINY_MIN_VOCAB}: the byte-level tokenizer has 256 byte tokens and 7 special tokens")
        return self


# the byte-level BPE of alignkit.models.tiny: 256 byte tokens + pad, eos, bos and 4 chat-role tokens
TINY_MIN_VOCAB = 263


class LoraConfig(Section):
    """LoRA adapters through ``peft`` (``model.lora``); the base weights stay frozen."""

    r: int = Field(8, gt=0, description="rank of the LoRA update matrices A, B")
    alpha: int = Field(16, description="scale numerator of the LoRA update (peft lora_alpha): B A is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout probability on the input of the LoRA branch (peft lora_dropout)")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="names of the modules to adapt, or all-linear: every linear layer except the output head (peft target_modules)")


class ModelConfig(Section):
    """The policy to start from: a local ``transformers`` checkpoint (``path``) or a tiny model built on
    the task's text (``tiny``, used when ``path`` is not set)."""

    path: str | None = Field(None, description="the starting policy: a local transformers folder, or a Hub id (org/name; read from the Hub cache when HF_HUB_OFFLINE=1); null: build a tiny model (model.tiny) in output_dir/initial-model")
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
    level: int = Field(1, ge=0, le=4, description="arithmetic difficulty (0-4; 4: three-digit sums and differences, for the calculator environment)")
    n_train: int = Field(2048, gt=0, description="training rows generated when data.train is unset (pairs, prompts, ... of the algorithm's data kind)")
    n_eval: int = Field(256, ge=0, description="held-out rows generated for evaluation when data.train is unset; 0: no eval set")
    label_temperature: float = Field(0.25, gt=0, description="temperature T of generated labels: Bradley–Terry P(a over b) = sigmoid((r_a - r_b) / T), thumbs up sigmoid(r / T); lower: less noise")
    label_noise: float = Field(0.0, ge=0, le=1, description="probability that a generated pair's label is flipped")
    objective_weights: tuple[float, float] | None = Field(None, description="multi_objective: (w_sentiment, w_brevity); default (0.5, 0.5)")
    minority_share: float = Field(0.2, gt=0, lt=1, description="pluralistic: share of the minority group (likes negative reviews)")


class DataConfig(Section):
    """Training data. ``train``/``eval`` are files (.jsonl, .json, .parquet, .csv), saved dataset or dataset
    folders, or Hub datasets (``org/name[:config]``); when ``train`` is unset the task generates it
    (``docs/data.md``: formats, Hub names, column renames)."""

    train: str | None = Field(None, description="training data: a .jsonl(.gz), .json, .parquet or .csv file, a saved dataset or dataset folder (folder[:config]), or a Hub dataset org/name[:config]; null: generated by the task")
    eval: str | None = Field(None, description="eval data, as train; null: task-generated (task.n_eval rows) when train is too, else no eval set")
    train_split: str | None = Field(None, description="split of data.train when it is a dataset with several (Hub, dataset folder, saved DatasetDict); null: train, else its only split")
    eval_split: str | None = Field(None, description="split of data.eval when it has several; null: test, validation, valid or dev (the first present), else its only split")
    format: str = Field("auto", description="public format of the rows (alignkit.data.formats.FORMATS: alignkit, openai, ultrafeedback, implicit_prompt, hh_raw, sharegpt, alpaca, system (a row's system message / value profile / principle list folded into its prompt), or one you register); auto: detected from each source's first row")
    columns: dict[str, str] = Field(default_factory=dict, description="renames applied before the format is read, {alignkit field: source column}, e.g. {prompt: question, chosen: response_j, rejected: response_k}")
    extra_columns: Literal["keep", "drop"] = Field("keep", description="fields outside the record kind's schema: keep (as metadata, in batch['meta']) or drop")
    score_margin: bool = Field(False, description="a pair row with score_chosen and score_rejected and no margin gets margin = score_chosen - score_rejected (reward.margin uses it)")
    kind: str = Field("auto", description="record kind of the rows (a name in alignkit.data.kinds.RECORD_KINDS: sft, pair, unpaired, ranked, prompt, ratings, steps, critique, spans, or one you register); auto: the algorithm's own kind (ranked also feeds dpo and reward)")
    max_length: int = Field(256, gt=1, description="most tokens in a row: prompt + completion (the longest completion of a pair or ranking)")
    truncation: Literal["error", "left", "right", "skip"] = Field(
        "error", description="a row over max_length: error raises; left drops prompt tokens from the start; right cuts the completion's end; skip leaves it out")
    skip_invalid: bool = Field(False, description="leave out rows with missing or bad fields and report how many (skipped-<split>.txt) instead of raising on the first")
    duplicates: Literal["keep", "drop"] = Field("keep", description="rows identical to an earlier row (every field equal) are counted and reported before training; keep trains on them, drop leaves them out")


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
    adam_eps: float = Field(1e-8, ge=0, description="epsilon added to the AdamW update's denominator")
    scheduler: Literal["constant", "linear", "cosine"] = Field("linear", description="learning rate after warmup: constant, linear decay to 0, or cosine decay to 0 at the last update")
    warmup_steps: int | None = Field(None, ge=0, description="optimizer updates of linear learning-rate warmup; overrides warmup_ratio")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="warmup as a share of all optimizer updates (used when warmup_steps is null)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm to this before each update; null: no clipping")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: forward passes and losses under bfloat16 autocast; fp32: no autocast")
    distributed: Literal["ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "ddp", description="with several processes: DDP (replicated), FSDP2 (sharded parameters, gradients, optimizer state), or DeepSpeed ZeRO-2 "
        "(sharded gradients and optimizer state) / ZeRO-3 (also parameters; needs alignkit[deepspeed], docs/scale.md)")
    log_every: int = Field(1, gt=0, description="steps between metrics records (metrics.jsonl and trackers)")
    eval_every: int | None = Field(None, gt=0, description="steps between evaluations on the eval set (also at step 0 and the last step); null: no evaluation")
    save_every: int | None = Field(None, gt=0, description="steps between resumable checkpoints (output_dir/checkpoint-<step>); null: none")
    save_total_limit: int | None = Field(2, gt=0, description="checkpoints kept: older ones are deleted; null: keep all")
    save_final: bool = Field(True, description="save the trained policy to output_dir/final (LoRA: the adapter, plus the merged model in final-merged)")
    resume: bool | str = Field(False, description="true: latest checkpoint in output_dir; or a checkpoint path")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list, description="trackers that also receive the metrics (metrics.jsonl is always written)")
    progress: bool = Field(True, description="show a progress bar (main process only)")
    overwrite: bool = Field(False, description="a fresh run (resume false) may replace an earlier run's checkpoints, metrics and final model in output_dir; otherwise it is refused")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a step whose loss or gradient is NaN/inf: stop (nothing applied, nothing saved as final) or skip its update and count it (nonfinite_skipped in the metrics)")

    @model_validator(mode="after")
    def _check_train(self) -> "TrainConfig":
        import string

        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(self.output_dir) if name is not None]
        except ValueError as e:
            raise ValueError(f"train.output_dir: {self.output_dir!r} is not a valid folder template ({e}); write a literal brace as {{{{ or }}}}") from None
        unknown = [name for name in fields if name != "algorithm"]
        if unknown:
            raise ValueError(f"train.output_dir: unknown placeholder {{{unknown[0]}}} in {self.output_dir!r}; allowed: {{algorithm}}")
        if not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"train.adam_betas: each beta must be in [0, 1) (got {list(self.adam_betas)})")
        return self


class SFTConfig(Section):
    """Supervised fine-tuning: token-mean negative log-likelihood of completion tokens."""


class VLLMConfig(Section):
    """The vLLM engine (``rl.sampling.vllm``), used when ``rl.sampling.backend`` resolves to ``vllm``."""

    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="share of the GPU vLLM may take (weights + KV cache); training shares the GPU")
    kv_cache_gb: float | None = Field(None, gt=0, description="KV-cache size in GiB; overrides gpu_memory_utilization; on CPU the default is 1 GiB (or VLLM_CPU_KVCACHE_SPACE)")
    max_model_len: int | None = Field(None, gt=0, description="longest prompt + completion; default: the model's max_position_embeddings")
    enforce_eager: bool = Field(True, description="no CUDA graphs / compilation: fast start")
    enable_prefix_caching: bool = Field(True, description="a group's samples share their prompt's KV blocks")
    server_url: str | None = Field(None, description="backend vllm_server: the URL of a running alignkit vLLM server (python -m alignkit.rollout.vllm_server); null: start one")
    server_timeout_s: float = Field(600.0, gt=0, description="backend vllm_server: seconds to wait for the server to start and for each call")


class SamplingConfig(Section):
    """Online RL, stage 1 (``rl.sampling``): how many completions per prompt, how they are decoded and by whom."""

    group_size: int = Field(4, gt=0, description="samples per prompt (a group; pairs for p3o and copg)")
    max_new_tokens: int = Field(32, gt=0, description="most tokens sampled per completion")
    temperature: float = Field(1.0, gt=0, description="sampling temperature; the update scores log-probs at the same temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: draw from the most likely tokens holding this probability mass (1: no truncation)")
    batch_size: int | None = Field(None, gt=0, description="rows decoded together; default: the whole rollout")
    backend: Literal["auto", "alignkit", "hf", "vllm", "vllm_server"] = Field(
        "auto", description="who samples rollouts: vllm (weights synced after every update), vllm_server (vLLM in a separate process, weights sent after every update), alignkit's KV-cache engine, or model.generate; auto = vllm when installed and the policy is on a CUDA GPU, else alignkit")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="vLLM engine settings, used when backend resolves to vllm")
    behavior: Literal["policy", "reference"] = Field("policy", description="the behaviour policy that samples: the live policy, or the frozen starting policy ('reference': CoPG's off-policy setting)")
    precision: Literal["model", "bf16"] = Field("model", description="weights the alignkit decoder samples from: the model's own (model), or a bf16 copy refreshed after every update (bf16: faster decoding; samples from the bf16-rounded policy, docs/conventions.md)")
    eval_samples: int = Field(1, gt=0, description="samples per eval prompt")


class KLConfig(Section):
    """Online RL: the KL penalty to the reference policy (``rl.kl``)."""

    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 loads no reference model")
    estimator: Literal["k1", "k2", "k3", "abs"] = Field("k3", description="per-token KL estimate, d = log pi - log pi_ref (Schulman): k1 d, k2 d^2 / 2, k3 exp(-d) + d - 1 (GRPO; unbiased, >= 0), abs: absolute d")
    in_reward: bool = Field(False, description="false: a beta * KL term in the loss (GRPO); true: subtracted from the rewards (PPO: per token; outcome estimators: per sample, before advantages; REINFORCE++: token returns)")


class AdvantageConfig(Section):
    """Online RL, stage 4: parameters of the outcome advantage estimators (``rl.advantage``)."""

    std: Literal["group", "batch", "none"] = Field("group", description="grpo: scale of the centred rewards (the group's std, the rollout's, or none)")
    moving_baseline: bool = Field(True, description="reinforce: subtract a moving average of the rollouts' mean reward")


class PolicyLossConfig(Section):
    """Online RL, stage 5: the policy-gradient loss and its clipping (``rl.policy``). ``auto`` resolves from
    ``rl.estimator``: p3o trains with the ``p3o`` loss and ``seq_mean_token_sum``, every other estimator with
    ``ppo_clip`` and ``token_mean`` (copg has its own regression loss and takes neither)."""

    loss: Literal["auto", "ppo_clip", "cispo", "gspo", "reinforce", "p3o"] = Field(
        "auto", description="ppo_clip: clipped ratio; cispo: clipped detached IS weight; gspo: sequence ratio (paper's clip range); reinforce: -A log p; p3o: trajectory ratio; auto: see above")
    aggregation: Literal["auto", "token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"] = Field(
        "auto", description="token losses to a scalar: mean over all tokens (DAPO), per-sequence mean (GRPO), sum, or sum / max_new_tokens (Dr. GRPO), then mean over sequences; auto: see above")
    clip_low: float = Field(0.2, ge=0, description="PPO clip: lower ratio bound 1 - clip_low (ppo_clip, p3o)")
    clip_high: float = Field(0.2, ge=0, description="upper ratio bound 1 + clip_high (ppo_clip, p3o, cispo); DAPO's clip-higher raises it above clip_low")
    dual_clip: float | None = Field(None, gt=1, description="ppo_clip dual clip (Ye et al. 2020): for negative advantages the loss is capped at -c A; null: off")


class UpdateConfig(Section):
    """Online RL, stage 5: how a rollout becomes optimizer steps (``rl.update``)."""

    epochs: int = Field(1, gt=0, description="passes over each rollout (PPO epochs)")
    mini_batches: int = Field(1, gt=0, description="optimizer steps per pass")
    share_prompts: bool = Field(True, description="compute each prompt once for its whole group in the update (packed rows); PPO keeps padded rows")
    skip_zero_advantage: bool = Field(True, description="leave samples whose advantage is exactly 0 (e.g. zero-variance groups) out of the update's forward/backward; their tokens stay in the mean's denominator, so the update is the same (outcome estimators without a KL loss term)")


class OffPolicyConfig(Section):
    """Online RL, stage 5: importance corrections for samples drawn by a behaviour policy μ other than the
    policy at the sampling weights (``rl.off_policy``; formulas in ``docs/scale.md``). μ's log-probs are the
    rollout engine's own (``Sample.logprobs``): a vLLM engine's (the engine-vs-trainer mismatch) or, with
    ``rl.sampling.behavior: reference``, the frozen starting policy's."""

    correction: Literal["none", "tis", "mis", "seq_tis", "seq_mis", "decoupled"] = Field(
        "none", description="none; tis: truncated IS min(ρ, cap); mis: masked IS (tokens with ρ outside [low, high] leave the loss); seq_tis / seq_mis: "
                            "one ratio per sequence; decoupled: decoupled PPO (clip on π/π_old, weight π_old/μ); ρ = π_old/μ per token")
    params: dict[str, Any] = Field(default_factory=dict, description="the correction's parameters, e.g. {cap: 2.0} (tis), {low: 0.5, high: 5.0} (mis), {ratio: geometric|product} (seq_*)")


class PPOConfig(Section):
    """Online RL: the critic and GAE of ``rl.estimator=ppo`` (``rl.ppo``), with MA-RLHF macro actions and RTO dense rewards."""

    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount factor per token (per macro action with macro_len)")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (1: Monte-Carlo returns minus values, 0: one-step TD errors)")
    vf_coef: float = Field(0.1, ge=0, description="weight of the critic's value loss in the total loss")
    value_clip: float | None = Field(0.2, description="value clipping: the larger of the plain error and that of values kept within this of the rollout's; null: plain squared error")
    whiten: bool = Field(True, description="normalise GAE advantages to mean 0, std 1 over the rollout's completion tokens")
    macro_len: int | None = Field(None, gt=0, description="MA-RLHF: GAE over fixed-length macro actions of this many tokens")
    dense_reward_model: str | None = Field(None, description="RTO: a DPO-trained policy whose per-token log-ratio to the reference is a dense reward")
    dense_reward_beta: float = Field(0.1, ge=0, description="RTO: coefficient of the dense reward log pi_dpo - log pi_ref added to every token's reward")


class DAPOConfig(Section):
    """Online RL, stage 3: DAPO's rollout filters and length shaping (``rl.dapo``)."""

    dynamic_sampling: bool = Field(False, description="drop groups whose rewards are all equal")
    overlong: Literal["none", "filter", "shape"] = Field("none", description="completions that reach max_new_tokens without stopping: filter drops them; shape applies the soft length penalty")
    overlong_buffer: int = Field(8, ge=0, description="shape: the last this many tokens of max_new_tokens, over which the penalty ramps up linearly")
    overlong_penalty: float = Field(1.0, ge=0, description="shape: reward subtracted from a completion of max_new_tokens tokens (less within the buffer)")


class EnvConfig(Section):
    """Online RL over multi-turn trajectories (``rl.env``): an environment answers every assistant turn, and a
    trajectory (every turn, with the environment's tokens masked out of the loss) is one sample (``docs/agents.md``)."""

    name: str = Field(..., description="the environment: a registered name (calculator, guess_number, self_correction: alignkit.envs.ENVIRONMENTS) or module:Class / ./file.py:Class")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the environment's constructor, e.g. {high: 31} for guess_number")
    max_turns: int = Field(4, ge=1, description="most assistant turns per episode (an environment may set fewer of its own)")
    max_tokens: int = Field(256, ge=2, description="most tokens of a whole trajectory (prompt, turns, environment tokens); a turn that reaches it, or an observation that leaves no room, ends the episode marked truncated")
    reward: Literal["sum", "final"] = Field("sum", description="a trajectory's reward: the sum of its turns' rewards, or the last turn's")
    credit: Literal["trajectory", "turn"] = Field("trajectory", description="trajectory: the trajectory's reward after its last token; turn (ppo, reinforce_pp): each turn's reward after that turn's last token, so a turn's return counts only the rewards from it on")
    tools: list[str] | None = Field(None, description="tool names (alignkit.envs.TOOLS, e.g. [calc]) offered instead of the environment's own; null: the environment's")
    describe_tools: bool = Field(True, description="show the tools' JSON schemas to the policy (tools= of the chat template, else in the system message); false for a model that learned them")
    first_turn_kl: float = Field(0.0, ge=0, description="SCoRe stage I: coefficient of an extra KL to the reference on the first turn's tokens only (in the loss); 0: off")
    truncated_reward: float | None = Field(None, description="the reward of a truncated trajectory (cut by max_new_tokens or max_tokens), e.g. the reward of a lost game, so that the length limit is no way out of an episode; null: what its turns earned")


class AsyncConfig(Section):
    """Online RL: asynchronous rollouts (``rl.asynchronous``; docs/scale.md). A background producer samples the next
    steps' prompts with the weights of an earlier step while the trainer updates; each sample records its policy
    version (the training step whose weights drew its first token), samples older than ``max_staleness`` versions are
    dropped and drawn again, and ``rl.off_policy`` corrects the rest with the producer's log-probs."""

    mode: Literal["off", "one_step_off", "async"] = Field(
        "off", description="off: sample with the current weights; one_step_off: step s trains on samples drawn by the weights of step s-1 while "
                           "step s+1's are drawn; async: the producer runs up to max_staleness steps ahead with the newest weights it has")
    max_staleness: int = Field(1, ge=0, description="most policy versions between sampling and training; older samples are dropped and drawn again "
                                                     "with the current weights (counted as async/dropped); async mode also queues this many steps ahead")
    partial_tokens: int | None = Field(None, gt=0, description="async mode: decode in segments of this many tokens and load newer weights between "
                                                               "segments, continuing unfinished samples from their prefix (partial rollouts); null: "
                                                               "a whole completion per weight version")


# the names of alignkit.rewards.transforms.TRANSFORMS (config sits below rewards; a test keeps the two equal)
REWARD_TRANSFORMS = ("none", "log_sigmoid", "clip", "whiten")
# estimators whose advantage compares a sample with the other samples of its prompt (0 for a group of 1)
GROUP_RELATIVE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "p3o", "copg")
# (policy loss, aggregation) that ``auto`` resolves to, and the only ones an estimator accepts when it has its own
_ESTIMATOR_POLICY = {"p3o": ("p3o", "seq_mean_token_sum")}
_DEFAULT_POLICY = ("ppo_clip", "token_mean")


class RLConfig(Section):
    """Online RL (``algorithm: rl``): sample, score, shape rewards, estimate advantages, update. The estimator
    and reward sit at the top; each stage's settings have their own sub-section."""

    estimator: Literal["grpo", "dr_grpo", "rloo", "remax", "reinforce", "reinforce_pp", "reinforce_pp_baseline", "ppo", "p3o", "copg"] = Field(
        "grpo", description="grpo to reinforce_pp_baseline: advantages from sequence rewards (remax: greedy baseline); ppo: GAE with a learned critic; p3o, copg: pairs of samples")
    reward: Any = Field("gold", description="gold (the task's gold reward), a reward model folder, module:function, or a reward-source mapping")
    reward_transforms: list[dict[str, Any]] = Field(default_factory=list, description="PPO-max-style reward normalisation, applied in order to each rollout's rewards, e.g. [{name: clip, low: -2, high: 2}, {name: whiten}] (names: alignkit.rewards.transforms.TRANSFORMS)")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="stage 1: samples per prompt, decoding, backend")
    dapo: DAPOConfig = Field(default_factory=DAPOConfig, description="stage 3: DAPO's dynamic sampling and overlong handling")
    kl: KLConfig = Field(default_factory=KLConfig, description="KL to the reference: coefficient, estimator, loss or reward")
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig, description="stage 4: outcome estimators' parameters")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="stage 4 for rl.estimator=ppo: critic and GAE")
    policy: PolicyLossConfig = Field(default_factory=PolicyLossConfig, description="stage 5: policy loss, aggregation, clipping")
    update: UpdateConfig = Field(default_factory=UpdateConfig, description="stage 5: epochs and mini-batches over each rollout")
    log_samples: int = Field(4, ge=0, description="every train.log_every steps, append this many of the step's samples (prompt, completion, reward, advantage) to output_dir/samples.jsonl; 0: none")
    env: EnvConfig | None = Field(None, description="multi-turn episodes with an environment (docs/agents.md): each sample is a whole trajectory rewarded by the environment; null: single completions scored by rl.reward")
    off_policy: OffPolicyConfig = Field(default_factory=OffPolicyConfig, description="stage 5: importance corrections for samples from another behaviour policy (docs/scale.md)")
    asynchronous: AsyncConfig = Field(default_factory=AsyncConfig, description="stage 1: one-step-off or asynchronous rollouts with a staleness bound (docs/scale.md)")

    @property
    def policy_loss(self) -> str:
        """``rl.policy.loss`` with ``auto`` resolved for the estimator."""
        return self.policy.loss if self.policy.loss != "auto" else _ESTIMATOR_POLICY.get(self.estimator, _DEFAULT_POLICY)[0]

    @property
    def aggregation(self) -> str:
        """``rl.policy.aggregation`` with ``auto`` resolved for the estimator."""
        return self.policy.aggregation if self.policy.aggregation != "auto" else _ESTIMATOR_POLICY.get(self.estimator, _DEFAULT_POLICY)[1]

    @model_validator(mode="after")
    def _check_rl(self) -> "RLConfig":
        est = self.estimator
        if est in GROUP_RELATIVE_ESTIMATORS and self.sampling.group_size < 2:
            raise ValueError(f"rl.sampling.group_size must be at least 2 for rl.estimator={est}: its advantages are relative to the other samples of a prompt, "
                             "so a group of 1 gives every advantage 0 and nothing is learned (use reinforce, reinforce_pp, remax or ppo for one sample per prompt)")
        if est in ("p3o", "copg") and self.sampling.group_size % 2:
            raise ValueError(f"rl.sampling.group_size must be even for rl.estimator={est} (samples are paired)")
        if est == "copg" and self.kl.beta <= 0:
            raise ValueError("rl.estimator=copg needs rl.kl.beta > 0 (its reward is r - beta * log pi/pi_ref)")
        if est == "copg" and (self.policy.loss, self.policy.aggregation) != ("auto", "auto"):
            raise ValueError("rl.estimator=copg trains with its own pairwise regression loss: leave rl.policy.loss and rl.policy.aggregation at auto")
        if est in _ESTIMATOR_POLICY:
            loss, aggregation = _ESTIMATOR_POLICY[est]
            if self.policy.loss not in ("auto", loss) or self.policy.aggregation not in ("auto", aggregation):
                raise ValueError(f"rl.estimator={est} trains with rl.policy.loss={loss} and rl.policy.aggregation={aggregation} "
                                 f"(got {self.policy.loss}, {self.policy.aggregation}); leave them at auto")
        for i, t in enumerate(self.reward_transforms):
            if t.get("name") not in REWARD_TRANSFORMS:
                raise ValueError(f"rl.reward_transforms[{i}].name: got {t.get('name')!r}; allowed: {', '.join(REWARD_TRANSFORMS)}")
        correcting = self.off_policy.correction != "none"
        if self.sampling.behavior == "reference" and est != "copg" and not correcting:
            raise ValueError("rl.sampling.behavior=reference (off-policy samples) is for rl.estimator=copg, which needs no importance weights, "
                             "or for an importance correction (rl.off_policy.correction: tis, mis, ...)")
        if correcting:
            if est in ("p3o", "copg"):
                raise ValueError(f"rl.off_policy: rl.estimator={est} trains with its own pairwise loss; corrections apply to the policy-gradient estimators and ppo")
            if self.sampling.backend == "hf":
                raise ValueError("rl.off_policy needs the behaviour policy's log-probs, which rl.sampling.backend=hf does not report (use auto, alignkit or vllm)")
        if self.asynchronous.mode != "off":
            mode = self.asynchronous.mode
            if not correcting:
                raise ValueError(f"rl.asynchronous.mode={mode} trains on samples of older weights: set rl.off_policy.correction (tis, mis, seq_tis, seq_mis, decoupled)")
            if self.sampling.behavior != "policy":
                raise ValueError(f"rl.asynchronous.mode={mode} samples from the policy's earlier weights: leave rl.sampling.behavior=policy")
            if self.sampling.precision != "model":
                raise ValueError(f"rl.sampling.precision=bf16 applies to synchronous sampling; with rl.asynchronous.mode={mode} leave rl.sampling.precision=model")
            if self.asynchronous.partial_tokens is not None and mode != "async":
                raise ValueError("rl.asynchronous.partial_tokens (partial rollouts) applies to rl.asynchronous.mode=async")
            if self.asynchronous.partial_tokens is not None and self.env is not None:
                raise ValueError("rl.asynchronous.partial_tokens (partial rollouts) applies to single completions; with rl.env a whole episode is drawn by one weight version")
        if (self.ppo.macro_len or self.ppo.dense_reward_model) and est != "ppo":
            raise ValueError("rl.ppo.macro_len and rl.ppo.dense_reward_model apply to rl.estimator=ppo")
        if self.env is not None:
            if est in ("remax", "p3o", "copg"):
                raise ValueError(f"rl.env: rl.estimator={est} is not supported over multi-turn trajectories (use grpo, dr_grpo, rloo, reinforce, reinforce_pp(_baseline) or ppo)")
            if self.reward != "gold":
                raise ValueError("rl.env: the environment gives the rewards; leave rl.reward at gold")
            if self.dapo.overlong == "shape":
                raise ValueError("rl.env: rl.dapo.overlong=shape measures one completion's length; use filter (drops truncated trajectories) or rl.env.max_tokens")
            if self.env.credit == "turn" and est not in ("ppo", "reinforce_pp"):
                raise ValueError(f"rl.env.credit=turn puts each turn's reward on its own tokens, for rl.estimator=ppo or reinforce_pp (got {est}); use credit=trajectory")
        return self


class DPOConfig(Section):
    """Direct preference optimisation (and, through ``loss``, any pairwise loss of
    :func:`alignkit.objectives.pairwise_loss`)."""

    loss: str = Field("dpo", description="pairwise loss: a name in alignkit.objectives.PAIRWISE_LOSSES (dpo, ipo, simpo, orpo, ...) or tdpo1, tdpo2")
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
    xpo_alpha: float | None = Field(None, ge=0, description="XPO (Xie et al. 2024): add alpha * log pi(y_ref) to each pair's loss, y_ref the side the reference sampled (rows from iterate.builder=vs_opponent with iterate.opponent=reference); null: off")
    group_robust: bool = Field(False, description="group-robust DPO (Ramesh et al. 2024): weight each pair's loss by alpha_g / p_g of its group g (metadata dpo.group_key; p_g the group's share), alpha updated every step by exponentiated gradient on the groups' losses (docs/pluralistic.md)")
    group_key: str = Field("group", description="group_robust: the row field (metadata) naming each pair's group")
    group_eta: float = Field(0.05, gt=0, description="group_robust: step size eta of alpha_g <- alpha_g exp(eta L_g) / normaliser")

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


class SPPOConfig(Section):
    """Self-play win-rate regression (``algorithm: sppo``): per-sample rows with an estimated win rate."""

    loss: Literal["sppo", "nash_md", "online_ipo", "soft_dpo"] = Field("sppo", description="sppo: SPPO, (log pi(y)/pi_t(y) - eta (P(y > pi_t) - 1/2))^2 (Wu et al. 2024); nash_md: Nash-MD's policy gradient on the win rate against the mixture opponent, reward P - 1/2 - beta log pi/pi_ref (Munos et al. 2023); on pair rows with a soft preference P (iterate.builder=soft_pairs): online_ipo: (h - (P - 1/2)/tau)^2 (online IPO, IPO-MD, INPO, EGPO), soft_dpo: -[P log sig(beta h) + (1 - P) log sig(-beta h)] (OSP)")
    eta: float = Field(1.0, gt=0, description="SPPO eta: the log-ratio target is eta * (win rate - 1/2)")
    beta: float = Field(0.1, ge=0, description="nash_md: KL coefficient (tau) of the regularised game; the per-sample reward is P(y > y') - 1/2 - beta * log pi(y)/pi_ref(y); soft_dpo: the DPO beta")
    tau: float = Field(0.1, gt=0, description="online_ipo: the IPO regularisation tau; the margin target is (P - 1/2)/tau (INPO: 1/eta)")
    kl_own: float = Field(0.0, ge=0, description="HyPO (pair losses): weight lambda of the reverse KL E_(y ~ pi)[log pi(y)/pi_ref(y)] estimated on each row's fresh own sample (iterate.builder=hypo); 0: off")
    optimism: float = Field(0.0, description="SELM / VPO (pair losses): add optimism * (log pi/pi_ref(chosen) + log pi/pi_ref(rejected))/2, the log-ratio on the reference's own samples; > 0 optimistic exploration, < 0 VPO's offline pessimism")


class RewardConfig(Section):
    """Reward-model training (``algorithm: reward``): Bradley–Terry (+ margin, centring), ensembles,
    ratings regression on ranked data, a pairwise preference model, a multi-objective (ArmoRM-style
    gated) model, or a process (per-step) reward model."""

    type: Literal["scalar", "preference", "multi_objective", "process", "mixture", "pal", "vpl", "arm", "spans", "context", "principles", "brme"] = Field(
        "scalar", description="scalar: one score per completion; preference: PairRM-style pair model; multi_objective: ArmoRM-style heads + gate; process: per-step PRM; "
        "spans: Text2Grad's span reward model, a per-token good/neutral/bad classifier trained on span annotations (docs/feedback.md); "
        "mixture: MaxMin-RLHF's EM mixture of K BT heads over users; pal: PAL ideal points (prototypes + user weights); vpl: VPL user latent from a few pairs (docs/pluralistic.md); "
        "arm: GenARM's autoregressive reward model, a causal LM whose summed token log-probs are the reward (docs/decoding.md); "
        "context: r(context, x, y), a preference conditioned on a context string; principles: SALMON's principle-conditioned r(principles, x, y); "
        "brme: BRME, K Gaussian reward heads on one trunk, reduced to a worst-case reward for RL (docs/pluralistic.md)")
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
    user_key: str = Field("user", description="mixture, pal, vpl: the row field (metadata) naming the user who labelled the pair")
    components: int = Field(2, ge=1, description="mixture: K reward heads (user clusters); pal: K prototypes")
    em_every: int = Field(25, ge=1, description="mixture: optimizer steps (M-step) between E-steps that re-assign users to clusters; pal: steps between re-fits of every training user's weights on their pairs")
    em_hard: bool = Field(True, description="mixture: E-step assigns each user to its most likely cluster (MaxMin-RLHF); false: soft responsibilities")
    feature_dim: int = Field(8, ge=1, description="pal, vpl: dimension of the learned features f(x, y)")
    latent_dim: int = Field(4, ge=1, description="vpl: dimension of the user latent z")
    kl_weight: float = Field(0.01, ge=0, description="vpl: weight of KL(q(z | user's pairs) || N(0, I)) in the loss")
    arm_beta: float = Field(1.0, gt=0, description="arm: beta_r of GenARM's loss -log sigmoid(beta_r (sum log pi_r(y_c|x) - sum log pi_r(y_r|x))); the reward is beta_r sum log pi_r(y|x)")
    context_pairs: int = Field(4, ge=1, description="vpl: labelled pairs of the same user the encoder reads for each training pair")
    context_key: str = Field("context", description="context: the row field holding the context string the preference is conditioned on")
    principles_key: str = Field("principles", description="principles: the row field holding the principle list (a list of strings, or one string)")
    heads: int = Field(4, ge=2, description="brme: K reward heads on the shared trunk, each a Gaussian N(mu_k, sigma_k^2)")
    prior_std: float = Field(1.0, gt=0, description="brme: s of the heads' prior N(0, s^2) on the reward")
    prior_weight: float = Field(0.01, ge=0, description="brme: weight of KL(N(mu_k, sigma_k^2) || N(0, s^2)) per completion in each head's loss")


class HindsightConfig(Section):
    """Chain of Hindsight (``feedback.method: hindsight``): one sequence per pair with feedback phrases."""

    better: str = Field("A better answer:", description="feedback phrase before the preferred answer (also the phrase to condition on at inference: prompt + ' ' + better)")
    worse: str = Field("A worse answer:", description="feedback phrase before the dispreferred answer")
    order: Literal["worse_first", "random"] = Field("random", description="random (the paper): each pair's order drawn from (seed, row), so either phrase follows the prompt; worse_first: always prompt, worse phrase, y-, better phrase, y+")
    train_on: Literal["both", "better"] = Field("both", description="answer tokens trained: both answers (the paper) or only the preferred one; feedback phrases and the prompt are never trained")


class CUTConfig(Section):
    """CUT (``feedback.method: cut``): judgment-based unlikelihood on the tokens a negative judgment explains."""

    flag: Literal["spans", "ratio"] = Field("spans", description="which tokens are inappropriate: spans (the bad spans of spans rows) or ratio (the paper's rule: p(y_t|x, judgment, y<t) > lambda * p(y_t|x, y<t))")
    ratio_lambda: float = Field(1.1, gt=0, description="lambda of the ratio rule")
    unlikelihood_weight: float = Field(1.0, ge=0, description="weight of the unlikelihood term -log(1 - p(y_t|x, y<t)) of flagged tokens")
    judgment_weight: float = Field(1.0, ge=0, description="weight of the aligned term -log p(y|x, judgment) of negatively judged completions (0: off)")
    template: str = Field("{prompt} (judgment: {judgment})", description="the judgment-conditioned context of the ratio rule and the aligned term; placeholders {prompt}, {judgment}")


class CRLFTConfig(Section):
    """C-RLFT (``feedback.method: c_rlft``): quality-class-conditioned weighted SFT (OpenChat)."""

    field: str = Field("quality", description="row field (metadata) naming each row's quality class")
    classes: dict[str, float] = Field(default_factory=lambda: {"expert": 1.0, "other": 0.1}, description="class -> reward weight r_c of its rows' NLL (the paper: 1 for expert data, 0.1 for sub-optimal)")
    template: str = Field("<{cls}> {prompt}", description="the class-conditioned prompt; placeholders {cls}, {prompt}")
    inference_class: str | None = Field(None, description="class to condition on at inference; null: the class of the largest weight")


class RewardAugmentedConfig(Section):
    """Reward-augmented DPO (``feedback.method: reward_augmented``): score-conditioned relabelling of pairs, then DPO (``dpo.*``)."""

    template: str = Field("<score {score}> {prompt}", description="the score-conditioned prompt; placeholders {score}, {prompt}")
    digits: int = Field(1, ge=0, le=4, description="decimals the scores are written with")
    chosen_field: str = Field("score_chosen", description="row field holding the chosen completion's score")
    rejected_field: str = Field("score_rejected", description="row field holding the rejected completion's score")
    keep_original: bool = Field(False, description="also keep each unconditioned pair (3 examples per pair instead of 2)")
    inference_score: float | None = Field(None, description="score to condition on at inference; null: the largest score in the training data")


class ILFConfig(Section):
    """ILF (``feedback.method: ilf``): refine with the critique, select the best refinement, fine-tune on it."""

    template: str = Field("{prompt}{completion} (feedback: {critique}) improved:", description="the refinement prompt; placeholders {prompt}, {completion}, {critique}")
    samples: int = Field(4, ge=0, description="K refinements sampled per critique row from the current policy (0: only the row's revision)")
    use_revision: bool = Field(True, description="a row's revision (written by a person or a programmatic critic) is a candidate too")
    reward: Any = Field("gold", description="the reward source that selects the best refinement (gold: the task's gold reward; a reward model folder, module:function, ...)")
    rounds: int = Field(1, gt=0, description="refine -> select -> fine-tune rounds; refinements are drawn again from the current policy at the start of each")
    refine_weight: float = Field(0.0, ge=0, description="weight of -log p(y*|refinement prompt), which teaches the policy to refine (0: only -log p(y*|x), the paper's loss)")
    max_new_tokens: int = Field(32, gt=0, description="most tokens per refinement")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the refinements")


class MODPOConfig(Section):
    """MODPO (``feedback.method: modpo``): DPO on one objective's preferences with a margin from the other objectives' rewards (then ``dpo.*``)."""

    weight: float = Field(0.5, gt=0, le=1, description="w_k, the weight of the objective whose preferences the pairs carry")
    margin_reward: Any = Field("attribute:brevity", description="the other objectives' reward r_-k: attribute:<name> (a gold attribute of the task), or any reward source (a multi-objective RM as {type: multi_objective, path, attribute}, a folder, module:function, combine)")
    margin_weight: float | None = Field(None, ge=0, description="w_-k, the weight of margin_reward; null: 1 - weight")


class DPAConfig(Section):
    """DPA (``feedback.method: dpa``): direction-conditioned rejection-sampling fine-tuning over a multi-objective reward."""

    attributes: list[str] = Field(default_factory=lambda: ["sentiment", "brevity"], description="the reward attributes the direction v weighs, in order")
    reward: Any = Field("gold", description="attribute scores: gold (the task's attribute_rewards) or a multi-objective reward model folder / {type: multi_objective, path}")
    template: str = Field("<v {direction}> {prompt}", description="the direction-conditioned prompt; placeholders {direction} (v's components, space-separated), {prompt}")
    digits: int = Field(2, ge=1, le=4, description="decimals v's components are written with")
    encoding: str = Field("decimal", description="how v is written into {direction}: decimal (components with `digits` decimals, the paper's form) or words (the nearest of len(words) evenly spaced angle buckets over angle_range, as its word)")
    words: list[str] = Field(default_factory=lambda: ["A", "B", "C", "D", "E"], description="encoding words: one word per angle bucket, from the first angle of angle_range to the last")
    angle_range: tuple[float, float] = Field((0.0, 90.0), description="training directions v = (cos t, sin t), t uniform in this range of degrees (two attributes)")
    samples: int = Field(4, ge=1, description="K completions sampled per prompt and direction from the current policy")
    rounds: int = Field(1, gt=0, description="sample -> select -> fine-tune rounds; new directions and samples at the start of each")
    keep_original: bool = Field(False, description="the row's own completion is a candidate too")
    inference_direction: list[float] | None = Field(None, description="direction written into conditioning.json; null: the middle of angle_range")
    max_new_tokens: int = Field(32, gt=0, description="most tokens per sample")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")


class FeedbackConfig(Section):
    """Language feedback and conditioned training (``algorithm: feedback``, ``docs/feedback.md``): Chain of
    Hindsight, CUT, ILF, C-RLFT, reward-augmented DPO, MODPO and DPA, one registered method each."""

    method: str = Field("hindsight", description="a name in alignkit.algorithms.feedback.FEEDBACK_METHODS: hindsight, cut, ilf, c_rlft, reward_augmented, modpo, dpa")
    hindsight: HindsightConfig = Field(default_factory=HindsightConfig, description="Chain of Hindsight")
    cut: CUTConfig = Field(default_factory=CUTConfig, description="CUT (judgment-based unlikelihood)")
    c_rlft: CRLFTConfig = Field(default_factory=CRLFTConfig, description="C-RLFT (class-conditioned weighted SFT)")
    reward_augmented: RewardAugmentedConfig = Field(default_factory=RewardAugmentedConfig, description="reward-augmented DPO")
    ilf: ILFConfig = Field(default_factory=ILFConfig, description="ILF (imitation learning from language feedback)")
    modpo: MODPOConfig = Field(default_factory=MODPOConfig, description="MODPO (multi-objective DPO with margins)")
    dpa: DPAConfig = Field(default_factory=DPAConfig, description="DPA (directional preference alignment)")


class TeacherConfig(Section):
    """Teacher completions (``iterate.teacher``): another model's completions of each round's prompts, judged
    with the policy's samples (``use: pool``) or taken as the chosen side (``use: chosen``)."""

    path: str = Field(..., description="the teacher model's folder (a full model or a LoRA adapter folder; its own tokenizer)")
    use: Literal["pool", "chosen"] = Field("pool", description="pool: the teacher's completions join each prompt's K samples before judging, so the builder may pick them (provenance source: teacher); chosen: the teacher's first completion is each prompt's chosen side against the policy's own samples (builder spin: teacher over own sample, no judge needed)")
    samples: int = Field(1, gt=0, description="teacher completions per prompt (use: pool); greedy decoding allows 1")
    greedy: bool = Field(True, description="decode the teacher greedily (its best guess); false: sample at temperature / top_p")
    temperature: float = Field(1.0, gt=0, description="the teacher's sampling temperature (greedy: false)")
    top_p: float = Field(1.0, gt=0, le=1, description="the teacher's nucleus sampling (greedy: false)")
    max_new_tokens: int | None = Field(None, gt=0, description="most tokens per teacher completion; null: iterate.max_new_tokens")

    @model_validator(mode="after")
    def _check(self) -> "TeacherConfig":
        if self.greedy and self.samples > 1:
            raise ValueError(f"iterate.teacher.samples={self.samples} with greedy=true gives the same completion {self.samples} times: set greedy=false or samples=1")
        return self


class IterateConfig(Section):
    """Iterative alignment (``alignkit iterate``, :mod:`alignkit.loops`): rounds of sample K completions per
    prompt from the live policy -> judge -> build examples -> train the recipe's ``algorithm`` (dpo with any
    dpo.loss, or sft) for steps_per_round steps in one long-lived trainer -> update the reference -> evaluate."""

    rounds: int = Field(3, gt=0, description="rounds of sample -> judge -> build -> train -> update reference -> evaluate")
    prompts_per_round: int = Field(64, gt=0, description="prompts sampled each round (from data.train rows, else the task's train prompts)")
    new_prompts: bool = Field(True, description="each round takes the next prompts_per_round prompts; false: the same prompts every round")
    samples_per_prompt: int = Field(4, ge=1, description="K: completions sampled per prompt from the current policy")
    steps_per_round: int = Field(8, gt=0, description="optimizer steps (batches of train.batch_size) trained on each round's examples")
    judge: Any = Field("gold", description="gold, preference (the task's oracle; {type: preference, model: <folder>} for a preference model), {type: llm, model: policy|<folder>, mode: score|choice, template: ...}, none, or any reward-source spec (reward model folder, module:function, mapping)")
    builder: str = Field("best_vs_worst", description="example builder (alignkit.loops.BUILDERS): best_vs_worst, all_pairs, random_pairs, large_margin, rso, spin (pairs, for algorithm dpo); best_of_k (sft); win_rate, win_rate_vs_opponent, soft_pairs (algorithm sppo)")
    builder_params: dict[str, Any] = Field(default_factory=dict, description="keyword parameters of the builder, e.g. {margin: 0.5} (large_margin), {beta: 0.5} (rso), {top: 1} (best_of_k)")
    reference: Literal["previous", "fixed", "soft", "geometric", "momentum"] = Field("previous", description="the DPO reference each round: previous (the iterate the round starts from), fixed (the starting model), soft (ref <- a * policy + (1 - a) * ref after each round), geometric (INPO: log ref = (1 - a) log pi_t + a log pi_start, a = eta * tau), momentum (accelerated PO: log ref = (1 + a) log pi_t - a log pi_(t-1), Nesterov extrapolation); a = reference_alpha")
    reference_alpha: float = Field(0.5, ge=0, le=1, description="a of the soft, geometric and momentum references")
    update: Literal["step", "extragradient"] = Field("step", description="step: each round's steps move the policy; extragradient (EGPO): the round's steps from theta_t give theta_(t+1/2), the same steps from there give the update applied to theta_t")
    checkpoint_rounds: bool = Field(True, description="write a resumable checkpoint and the loop's state after every round (alignkit iterate ... train.resume=true continues a killed run at its round and step)")
    reset_optimizer: bool = Field(False, description="clear the AdamW moments at the start of every round after the first (the learning-rate schedule continues)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the round's completions")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the round's completions")
    max_new_tokens: int = Field(32, gt=0, description="most tokens sampled per completion")
    backend: Literal["auto", "alignkit", "hf", "vllm"] = Field("alignkit", description="rollout engine that samples the rounds (held for the whole run)")
    generation_batch_size: int = Field(64, gt=0, description="samples decoded together (also the LLM judge's batch)")
    seed: int | None = Field(None, description="seed of the round's sample streams (named by seed, round and prompt index) and builders; null: train.seed")
    eval_prompts: int = Field(64, ge=0, description="held-out task prompts evaluated (gold reward, KL to the start) before the first round and after each; 0: none")
    eval_samples: int = Field(2, gt=0, description="samples per eval prompt")
    eval_max_new_tokens: int = Field(48, gt=0, description="most tokens per eval sample")
    save_rounds: bool = Field(False, description="also save the policy after every round (output_dir/rounds/model-R)")
    opponent: Literal["policy", "reference", "mixture"] = Field("policy", description="where the samples each policy sample is compared with come from: policy (the K samples compare among themselves), reference (opponent_samples more from the loop's reference model, pi_ref: XPO), mixture (from the geometric mixture pi^(1-m) pi_ref^m, m = mixture_coef: Nash-MD, IPO-MD); builders vs_opponent and win_rate_vs_opponent use them")
    opponent_samples: int = Field(1, gt=0, description="opponent samples per prompt (iterate.opponent reference or mixture)")
    mixture_coef: float = Field(0.5, ge=0, le=1, description="m of the mixture opponent: per-token log p = (1 - m) log pi + m log pi_ref (+ const); 0: the policy, 1: the reference")
    eval_every: int = Field(1, gt=0, description="rounds between evaluations (the last round is always evaluated); online variants (steps_per_round=1) raise it")
    teacher: TeacherConfig | None = Field(None, description="teacher completions: {path: <model folder>, use: pool|chosen, samples, greedy, temperature, top_p, max_new_tokens}; null: none")


class ScaleConfig(Section):
    """Orchestration beyond one process (``scale``; docs/scale.md). ``backend: none`` runs everything in this process and
    never imports Ray. ``ray`` (``pip install alignkit[ray]``): online RL's rollouts run on Ray actors (rollout workers,
    each holding a rollout engine, and a reward worker), driven by this process, which trains; after each update the
    weights go to the workers through the rollout protocol's ``update_weights`` (named tensors, via the object store)."""

    backend: Literal["none", "ray"] = Field("none", description="none: one process (Ray never imported); ray: rollout and reward workers as Ray actors")
    address: str | None = Field(None, description="the Ray cluster to join: auto (a cluster started with `ray start`), host:6379, or ray://host:10001; null: start a local cluster")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the local cluster started when address is null; null: Ray's default (all)")
    rollout_workers: int = Field(1, gt=0, description="rollout worker actors; each step's prompts are split between them (whole groups)")
    trainer_processes: int = Field(1, gt=0, description="processes of the trainer group (each drives its own rollout workers): more than 1 starts them as Ray actors in one process group, or checks a torchrun launch")
    trainer_cpus: float = Field(1.0, ge=0, description="CPUs each trainer process reserves (trainer_processes > 1)")
    trainer_gpus: float = Field(0.0, ge=0, description="GPUs each trainer process reserves (trainer_processes > 1; 1 per process for NCCL)")
    placement: Literal["colocated", "disaggregated"] = Field(
        "colocated", description="colocated: the workers share the trainer's node and devices and take turns with it; disaggregated: one placement-group bundle per worker")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field("PACK", description="disaggregated: how Ray places the workers' bundles across nodes")
    worker_cpus: float = Field(1.0, ge=0, description="CPUs each rollout worker reserves")
    worker_gpus: float = Field(0.0, ge=0, description="GPUs each rollout worker reserves (fractions share a GPU)")
    reward_worker: bool = Field(True, description="score rewards in a reward worker actor (false: in this process)")
    reward_cpus: float = Field(0.0, ge=0, description="CPUs the reward worker reserves")
    reward_gpus: float = Field(0.0, ge=0, description="GPUs the reward worker reserves (a reward model on a GPU)")
    timeout_s: float = Field(120.0, gt=0, description="seconds to wait for the workers' resources (placement group, actors) before failing")


ALGORITHMS = ("sft", "dpo", "kto", "pro", "reward", "rl", "sppo", "feedback")


class Recipe(Section):
    algorithm: Literal["sft", "dpo", "kto", "pro", "reward", "rl", "sppo", "feedback"]
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
    sppo: SPPOConfig = Field(default_factory=SPPOConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="algorithm feedback: Chain of Hindsight, CUT, ILF, C-RLFT, reward-augmented DPO")
    iterate: IterateConfig | None = Field(None, description="iterative alignment (alignkit iterate): rounds of sample, judge, build, train; null: not iterative")
    scale: ScaleConfig = Field(default_factory=ScaleConfig, description="orchestration beyond one process: Ray rollout and reward workers (docs/scale.md)")

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        t = self.train
        if t.distributed.startswith("deepspeed") and t.nonfinite == "skip":
            raise ValueError(f"train.distributed={t.distributed} needs train.nonfinite=stop (DeepSpeed's step cannot be skipped); docs/scale.md")
        if t.micro_batch_size is not None and t.batch_size % t.micro_batch_size:
            raise ValueError(f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size ({t.micro_batch_size})")
        if self.scale.backend == "ray":
            if self.algorithm != "rl" or self.iterate is not None:
                raise ValueError(f"scale.backend=ray drives online RL's rollouts (algorithm: rl, alignkit train); got algorithm: {self.algorithm}"
                                 + (" with an iterate section" if self.iterate is not None else "") + " (docs/scale.md)")
            if self.rl.env is not None or self.rl.sampling.behavior != "policy":
                raise ValueError("scale.backend=ray samples single completions from the policy: leave rl.env unset and rl.sampling.behavior=policy (docs/scale.md)")
            if self.rl.sampling.precision != "model":
                raise ValueError("rl.sampling.precision=bf16 is a setting of the local alignkit decoder; with scale.backend=ray leave rl.sampling.precision=model")
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
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as e:
        problem = str(getattr(e, "problem", None) or e).strip()
        raise ConfigError(f"override '{item}': the value is not valid YAML ({problem})") from None
    return key.strip().split("."), parsed


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
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
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
    ``"rl.sampling.vllm"``) or all of them; raises ConfigError for an unknown section."""
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
        lines += ["# Recipe options", "", "Every key a recipe (YAML) or a dotted override (`alignkit train recipe.yaml rl.kl.beta=0.1`)",
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
            elif field.is_required():
                default = "required"
            else:
                default = f"`{field.default}`"
            meaning = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {kind} | {default} | {meaning} |")
        lines.append("")
    return "\n".join(lines)

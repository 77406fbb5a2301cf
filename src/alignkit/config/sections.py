"""The recipe's common sections: ``model`` (with ``tiny`` and ``lora``), ``task``, ``data``, ``train``, ``sft``, ``scale``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    precision: Literal["fp32", "bf16", "bf16_params"] = Field(
        "fp32", description="fp32: no autocast; bf16: forward passes and losses under bfloat16 autocast (fp32 weights); bf16_params: the weights "
        "themselves in bfloat16 (no autocast casts, faster on CPU) with fp32 master weights in the optimizer, fp32 gradient accumulation and "
        "fp32 checkpoints (one process or DDP)")
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
        if self.precision == "bf16_params" and self.distributed != "ddp":
            raise ValueError(f"train.precision=bf16_params runs on one process or DDP, not train.distributed={self.distributed} "
                             "(sharded parameters keep their own precision there); use train.precision=bf16 with it")
        return self


class SFTConfig(Section):
    """Supervised fine-tuning: token-mean negative log-likelihood of completion tokens."""




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



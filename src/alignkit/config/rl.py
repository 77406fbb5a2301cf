"""The ``rl`` section of a recipe (online RL) and its sub-sections: sampling, KL, advantages, policy loss, update,
off-policy corrections, PPO, DAPO, environments, asynchronous rollouts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .sections import Section


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



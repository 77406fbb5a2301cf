"""Sections of the offline and iterative methods: ``dpo``, ``kto``/``unpaired``, ``pro``, ``sppo``, ``reward``, ``feedback``
(language feedback and conditioned training), ``iterate`` (with ``teacher``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .sections import Section


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



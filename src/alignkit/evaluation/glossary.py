"""One-line explanations of the columns and metrics alignkit reports (what it is, its units, which way is
better), used by the HTML reports, the ``alignkit eval`` table and the axis labels of training panels.

:func:`explain` looks a name up exactly, then by its prefix (``eval/loss`` is the held-out ``loss``,
``gold/<part>`` one attribute's gold reward, ``cost/<what>`` a decoding cost); it returns ``None`` for a
name it does not know, so a test can require an explanation for every column a report shows."""

from __future__ import annotations

# what it is (units); direction. "higher is better" / "lower is better" / "neither: ..." is always stated
# for a score; labels and counts say what they count.
COLUMNS: dict[str, str] = {
    # table structure
    "key": "the metric's name",
    "value": "the metric's value",
    "meaning": "what the metric is, its units and which direction is better",
    "name": "which model or checkpoint the row evaluates (dpo@K: the DPO checkpoint after K optimizer steps)",
    "method": "the training method (recipe) of the row",
    "run": "the run folder's name within the suite",
    "step": "optimizer steps done when the model was evaluated",
    "n": "number of samples (or pairs) the row's means are taken over",
    "n_pairs": "number of held-out preference pairs scored",
    "bucket": "range of the pair's margin (|gold difference|, or the data's margin field) the row covers",
    "reference": "the reference model the KL, win rate and implicit rewards are measured against",
    "strategy": "the decoding strategy of a policy = model + strategy (empty: plain sampling at temperature 1)",
    "strategy_stats": "the decoding strategy's own statistics (JSON)",
    "strategy_options": "the decoding strategy's options (JSON)",
    "cost": "what the decoding strategy cost (JSON: forward passes, tokens, reward calls, seconds)",
    "extra_metrics_error": "why the extra metrics (KL k3, win rate, diversity, implicit-reward accuracy) could not be computed",
    "warning": "a problem with the evaluation that makes its numbers doubtful",
    "data": "the data file the evaluation reads",
    "kind": "the data's record kind (pair, unpaired, sft, prompt, ...)",
    "model": "the evaluated model folder",
    "reward": "the reward source (spec) scoring the samples; in a samples table: the sample's reward (reward units), higher is better",
    "samples": "the first samples drawn (prompt, completion, scores)",
    "notes": "what could not be measured and why",
    # gold-task policy evaluation
    "gold_reward": "mean gold reward of the task over the samples (the task's units, sentiment: -1..1, malformed -2); higher is better",
    "gold_reward_se": "standard error of the mean gold reward (same units); smaller means a more precise mean",
    "gold": "the sample's gold reward (the task's units); higher is better",
    "kl": "KL(policy ‖ reference) estimated on the policy's samples (k1: mean of log π − log π_ref), nats per completion; lower stays closer to the reference",
    "kl_se": "standard error of the KL estimate, nats per completion",
    "kl_k1": "KL(policy ‖ reference), k1 estimator (mean log π − log π_ref over the policy's samples; unbiased, can be < 0), nats per completion; lower is closer",
    "kl_k1_se": "standard error of kl_k1, nats per completion",
    "kl_k3": "KL(policy ‖ reference), k3 estimator (mean e^−d + d − 1, d = log π − log π_ref; unbiased, ≥ 0), nats per completion; lower is closer",
    "kl_k3_se": "standard error of kl_k3, nats per completion",
    "win_rate": "fraction of prompts where the model's sample beats the reference's sample (ties ½), 0..1; higher is better, 0.5 = no difference",
    "length": "mean completion length, tokens (stop token included); neither better: watch for length hacking",
    "words": "mean completion length, whitespace words; neither better: watch for length hacking",
    "malformed": "fraction of samples the task's gold reward cannot parse, 0..1; lower is better (near 1: the model does not write this task's format)",
    "distinct_2": "distinct word bigrams over all bigrams of the samples, 0..1; higher is more diverse",
    "self_bleu": "mean BLEU of each sample against the others, 0..1; lower is more diverse",
    "proxy": "mean score of the proxy reward model the method optimised (its units); compare with gold_reward to see over-optimisation",
    "implicit_reward_accuracy": "fraction of held-out pairs with β·log(π/π_ref)(chosen) > β·log(π/π_ref)(rejected) (ties ½), 0..1; higher is better, 0.5 = chance",
    "implicit_reward_beta": "β of the implicit reward β·log(π/π_ref) (the run's dpo.beta, else the --beta given)",
    "logprob_curves": "chosen / rejected log-probs along training, (step, nats) points (JSON)",
    "prompt": "the prompt the sample answers",
    "completion": "the sampled completion (greedy or temperature-1 sample, special tokens removed)",
    "finished": "true when the completion ended with the stop token, false when it hit max_new_tokens",
    "gold_reward_sample": "the sample's gold reward",
    # reward-model evaluation (eval-rm)
    "accuracy": "fraction of pairs the reward ranks the chosen completion above the rejected (ties ½), 0..1; higher is better, 0.5 = chance",
    "ece": "expected calibration error of σ(r_chosen − r_rejected) as P(chosen wins), 10 bins, 0..1; lower is better",
    "mean_margin": "mean r(chosen) − r(rejected) over pairs (reward units); higher separates the pairs more",
    "reward_mean": "mean reward over every scored completion (reward units); neither better: the offset is arbitrary",
    "reward_std": "standard deviation of the reward over every scored completion (reward units); neither better: the scale",
    "gold_pearson": "Pearson correlation between the reward and the task's gold reward over every completion, −1..1; higher is better",
    "gold_spearman": "Spearman rank correlation between the reward and the gold reward, −1..1; higher is better",
    "gold_agreement": "fraction of pairs with different gold rewards where the reward orders them as the gold reward does, 0..1; higher is better",
    "bayes_accuracy": "best expected accuracy on labels drawn by Bradley–Terry from the gold reward (mean σ(|Δgold|/T)), 0..1: the ceiling for accuracy",
    "task": "the built-in task whose gold reward or pairs are used",
    "split": "the task split the pairs are drawn from",
    "source": "the reward source evaluated",
    "temperature": "Bradley–Terry temperature T of the task's labels",
    # evaluation on the user's data (alignkit eval --data)
    "pairs": "number of preference pairs in the data",
    "rows": "number of rows of the data evaluated",
    "beta": "β of the implicit reward β·log(π/π_ref) (the run's dpo.beta, else --beta)",
    "implicit_reward_margin": "mean over pairs of β·log(π/π_ref)(chosen) − β·log(π/π_ref)(rejected), nats × β; higher is better, 0 = no preference",
    "implicit_reward_margin_se": "standard error of the implicit-reward margin, nats × β",
    "logp_accuracy": "fraction of pairs where the model gives the chosen completion the higher log-likelihood log π(y|x) (summed over tokens; ties ½), 0..1; higher is better",
    "logp_per_token_accuracy": "as logp_accuracy with each log-likelihood divided by the completion's tokens (removes the length effect), 0..1; higher is better",
    "reference_logp_accuracy": "logp_accuracy of the reference model (the baseline the training started from), 0..1",
    "chosen_logp": "mean summed log-likelihood of the chosen completions under the model, nats; higher is more likely",
    "rejected_logp": "mean summed log-likelihood of the rejected completions under the model, nats; lower is better relative to chosen_logp",
    "desirable": "number of rows labelled desirable (label true)",
    "undesirable": "number of rows labelled undesirable (label false)",
    "desirable_implicit_reward": "mean β·log(π/π_ref) of the desirable completions, nats × β; higher is better",
    "undesirable_implicit_reward": "mean β·log(π/π_ref) of the undesirable completions, nats × β; lower is better",
    "completion_logp_per_token": "mean log-likelihood per token of the data's completions under the model, nats/token; higher fits the data better",
    "reference_completion_logp_per_token": "the same under the reference model, nats/token (the baseline)",
    "prompts": "number of distinct prompts sampled",
    "samples_per_prompt": "samples drawn per prompt from the model and from the reference (temperature 1)",
    "model_reward": "mean reward of the model's samples on the data's prompts (reward units); higher is better",
    "model_reward_se": "standard error of model_reward (reward units)",
    "reference_reward": "mean reward of the reference's samples on the same prompts (reward units); the baseline",
    "reference_reward_se": "standard error of reference_reward (reward units)",
    "model_length": "mean length of the model's samples, tokens; neither better: watch for length hacking",
    "reference_length": "mean length of the reference's samples, tokens",
    "reference_completion": "the reference model's sample for the same prompt",
    "model_sample_reward": "the reward of the model's sample",
    "reference_sample_reward": "the reward of the reference's sample",
}

# prefixes: (prefix, how the rest of the name is explained)
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("eval/", "on the held-out eval data: "),
    ("gold/", "mean gold reward of the part '{rest}' of the task (the task's units); higher is better"),
    ("cost/", "decoding cost: {rest} (counts, or seconds for wall_s / estimate_s); lower is cheaper"),
    ("strategy/", "a statistic of the decoding strategy: {rest}"),
)

# training metrics (metrics.jsonl keys), for the training panels: (axis label, explanation)
TRAINING: dict[str, tuple[str, str]] = {
    "loss": ("loss (nats)", "the training objective on the step's batch; lower is better"),
    "lr": ("learning rate", "the optimizer's learning rate at the step (schedule: warm-up then decay)"),
    "grad_norm": ("gradient norm", "L2 norm of the gradient before clipping"),
    "rewards/accuracy": ("implicit-reward accuracy (0..1)", "fraction of the batch's pairs with a higher implicit reward for chosen; higher is better"),
    "rewards/margins": ("implicit-reward margin (β·nats)", "mean β·log(π/π_ref)(chosen) − same for rejected; higher is better"),
    "rewards/chosen": ("chosen implicit reward (β·nats)", "mean β·log(π/π_ref) of the chosen completions"),
    "rewards/rejected": ("rejected implicit reward (β·nats)", "mean β·log(π/π_ref) of the rejected completions"),
    "logps/chosen": ("chosen log-prob (nats)", "mean summed log π(chosen | prompt)"),
    "logps/rejected": ("rejected log-prob (nats)", "mean summed log π(rejected | prompt)"),
    "kl": ("KL to reference (nats)", "k1 estimate of KL(policy ‖ reference) on the step's samples"),
    "reward": ("reward", "mean reward of the step's samples; higher is better"),
}


def explain(name: str) -> str | None:
    """The one-line explanation of a column or metric ``name``, or None when it has none."""
    if name in COLUMNS:
        return COLUMNS[name]
    if name in TRAINING:
        return TRAINING[name][1]
    for prefix, text in _PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if "{rest}" in text:
                return text.format(rest=rest)
            inner = explain(rest)
            return text + inner if inner else None
    return None


def axis_label(key: str) -> str:
    """The y-axis label of a training panel of metric ``key`` (with units where they are known)."""
    held_out = key.startswith("eval/")
    base = key[len("eval/") :] if held_out else key
    label = TRAINING[base][0] if base in TRAINING else base
    return f"held-out {label}" if held_out else label


def panel_title(key: str) -> str:
    """A readable panel title: what the metric is (the explanation's first clause) and, for held-out keys, that."""
    base = key[len("eval/") :] if key.startswith("eval/") else key
    label = TRAINING[base][0].split(" (")[0] if base in TRAINING else base
    return ("held-out " if key.startswith("eval/") else "") + label

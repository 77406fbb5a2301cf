"""Evidence for docs/results.md: one command per claim, from scratch (demonstrations, tiny model, SFT stage,
then the RL arms at an equal budget), ending with `alignkit eval --env` numbers on held-out prompts.

    python recipes/agents/evidence.py calculator [--steps 30]        # GRPO with the calc tool vs without a tool
    python recipes/agents/evidence.py self_correction [--steps 40]   # SCoRe (stage I then II) vs naive multi-turn RL
    python recipes/agents/evidence.py guess_number [--steps 60]      # regret of the guessing game along GRPO
    python recipes/agents/evidence.py ENV [OVERRIDES]                # recipe overrides for every RL run, e.g. train.lr=2e-3
    python recipes/agents/evidence.py calculator --copying MODEL     # how often MODEL copies the expression and the tool's result

calculator: both arms are recipes/agents/calculator_grpo.yaml with the same budget (steps, prompts, samples,
seed) from the same SFT model; the second offers no tool (`rl.env.tools=[]`: a call is answered "error:
unknown tool"), so the policy must answer from its head. self_correction: recipes/agents/self_correction.yaml;
SCoRe spends half the steps in stage I (reward r2, KL on turn 1) and half in stage II (r1 + r2 + (r2 - r1),
no first-turn KL), the naive arm all of them on r1 + r2 (both turns rewarded, no KL on turn 1).
guess_number: recipes/agents/guess_number_grpo.yaml. Each stage that exists already is reused. Writes
<out>/summary.json and docs/figures/agents_<env>.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCORE_STAGE_2 = ["rl.env.first_turn_kl=0", "rl.env.reward=sum", "rl.env.options={first_turn_weight: 1.0, progress_bonus: 1.0}"]
NAIVE = ["rl.env.first_turn_kl=0", "rl.env.reward=sum", "rl.env.options={first_turn_weight: 1.0, progress_bonus: 0.0}"]

# env -> the SFT stage (demonstration options, tiny-model folder, SFT recipe), the RL recipe, its arms
# ({label: [overrides of each stage]}; the steps are split evenly over the stages), the two plotted metrics
SETUPS = {
    "calculator": {
        "demos": ["--level", "3", "--n", "1000", "--option", "tool_share=0.7"], "tiny": "runs/agents/calculator-tiny",
        "sft": "recipes/agents/calculator_sft.yaml", "recipe": "recipes/agents/calculator_grpo.yaml",
        # 8 epochs leave a model that copies neither the expression nor the result (0 %); 12 more make it copy
        "sft_more": ["train.output_dir=runs/agents/calculator-sft-more", "train.epochs=12"],
        "arms": {"with the calc tool": [[]], "without a tool (rl.env.tools=[])": [["rl.env.tools=[]"]]},
        "plot": ("success", "tool_calls"), "ylabel": "exact answers",
    },
    "self_correction": {
        "demos": ["--level", "1", "--n", "1000"], "tiny": "runs/agents/selfcorrect-tiny", "sft": "recipes/agents/self_correction_sft.yaml",
        "recipe": "recipes/agents/self_correction.yaml",
        "arms": {"SCoRe (stage I, then II)": [[], SCORE_STAGE_2], "naive multi-turn RL (r1 + r2)": [NAIVE]},
        "plot": ("turn2_correct", "turn1_correct"), "ylabel": "turn-2 accuracy",
    },
    "guess_number": {
        "demos": ["--n", "800"], "tiny": "runs/agents/guess-tiny", "sft": "recipes/agents/guess_number_sft.yaml",
        "recipe": "recipes/agents/guess_number_grpo.yaml", "arms": {"GRPO": [[]]}, "plot": ("regret", "success"),
        "ylabel": "regret (wrong guesses per game)",
    },
}


def prepare(env: str) -> Path:
    """The SFT model of ``env`` (demonstrations, tiny model and SFT run when they are missing)."""
    from alignkit.algorithms import train
    from alignkit.config import load_recipe
    from alignkit.envs.demos import main as demos

    setup = SETUPS[env]
    tiny = ROOT / setup["tiny"]
    if not (tiny / "config.json").exists():
        demos([env, *setup["demos"], "--tiny", str(tiny)])
    recipe = load_recipe(ROOT / setup["sft"], [f"model.path={tiny}", "train.progress=false"])
    final = recipe.output_dir / "final"
    if not final.exists():
        train(recipe)
    if setup.get("sft_more"):  # a second SFT run from the first one's model (a fresh schedule)
        more = load_recipe(ROOT / setup["sft"], [f"model.path={final}", "train.progress=false", *setup["sft_more"]])
        final = more.output_dir / "final"
        if not final.exists():
            train(more)
    return final


def held_out(folder: Path, model: Path, n_prompts: int, samples: int) -> dict:
    """``alignkit eval MODEL --env`` numbers of ``model`` with the RL run ``folder``'s environment settings."""
    from alignkit.envs import Limits
    from alignkit.evaluation.agents import agent_rows, evaluate_agent, run_env
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer

    run = run_env(folder)
    env = run["env"]
    limits = Limits(max_turns=env["max_turns"], max_tokens=env["max_tokens"], reward=env["reward"], tools=env["tools"],
                    describe_tools=env["describe_tools"], truncated_reward=env["truncated_reward"])
    result = evaluate_agent(load_policy_for_inference(model), load_tokenizer(model), env["name"], agent_rows(run["task"], n_prompts), env["options"],
                            n_samples=samples, max_new_tokens=run["sampling"]["max_new_tokens"], seed=0, limits=limits)
    return {k: v for k, v in result.summary().items() if isinstance(v, (int, float)) or v is None}


def copying(model: Path, n_prompts: int = 64, level: int = 3) -> dict:
    """Why the calculator does not help a tiny model: over held-out episodes (the recipe's settings), the share
    of valid ``calc`` calls whose expression is the prompt's, and of answers after a tool result that repeat it."""
    from alignkit.envs import CalculatorEnv, Limits, parse_tool_calls, run_episodes
    from alignkit.evaluation.agents import agent_rows
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer
    from alignkit.rollout import Sampling, build_rollout_engine

    rows = agent_rows({"name": "arithmetic", "level": level}, n_prompts) * 2
    engine = build_rollout_engine("alignkit", load_policy_for_inference(model), load_tokenizer(model))
    trajectories = run_episodes(engine, CalculatorEnv, rows, list(range(len(rows))), Sampling(max_new_tokens=40, seed=0),
                                Limits(max_turns=3, max_tokens=96, describe_tools=False))
    calls = exprs = answers = copied = 0
    for t in trajectories:
        expression = str(t.prompt).rstrip().rstrip("=").strip()
        for i, m in enumerate(t.messages):
            if m["role"] == "assistant":
                for call in parse_tool_calls(m["content"], {"calc"}):
                    calls += call.valid
                    exprs += call.valid and str(call.arguments.get("expr", "")).strip() == expression
            if m["role"] == "tool" and i + 1 < len(t.messages) and t.messages[i + 1]["role"] == "assistant":
                answers += 1
                copied += t.messages[i + 1]["content"].strip().rstrip(".").strip() == m["content"].strip()
    return {"episodes": len(trajectories), "valid_calls": calls, "expression_copied": exprs / max(1, calls),
            "answers_after_a_result": answers, "result_copied": copied / max(1, answers)}


def run(env: str, steps: int, out: Path, settings: list[str], n_prompts: int = 128, samples: int = 2) -> dict:
    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    setup = SETUPS[env]
    start = prepare(env)
    first, second = setup["plot"]
    summary: dict = {}
    for a, (label, stages) in enumerate(setup["arms"].items()):
        model, curves = start, {first: [], second: [], "eval": []}
        per_stage = steps // len(stages)
        for k, extra in enumerate(stages):
            folder = out / f"arm{a}-stage{k}"
            overrides = [f"model.path={model}", f"train.output_dir={folder}", f"train.max_steps={per_stage}", f"train.eval_every={per_stage}",
                         "train.progress=false", "task.n_eval=128", *settings, *extra]
            if not (folder / "final").exists():
                train(load_recipe(ROOT / setup["recipe"], overrides))
            lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            rows = [m for m in lines if f"env/{first}" in m and "loss" in m]
            curves[first] += [m[f"env/{first}"] for m in rows]
            curves[second] += [m.get(f"env/{second}", 0.0) for m in rows]
            curves["eval"] += [{"step": m["step"] + k * per_stage, **{key.removeprefix("eval/"): v for key, v in m.items() if key.startswith("eval/")}}
                               for m in lines if f"eval/env/{first}" in m]
            model = folder / "final"
        if "start" not in summary:
            summary["start"] = held_out(out / "arm0-stage0", start, n_prompts, samples)
        summary[label] = {**curves, "end": held_out(folder, model, n_prompts, samples)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def plot(env: str, summary: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, second = SETUPS[env]["plot"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, s in summary.items():
        if label == "start":
            continue
        axes[0].plot(range(1, len(s[first]) + 1), s[first], label=f"{label} (rollouts)")
        axes[0].plot([e["step"] for e in s["eval"]], [e[f"env/{first}"] for e in s["eval"]], "o--", label=f"{label} (held-out)")
        axes[1].plot(range(1, len(s[second]) + 1), s[second], label=label)
    axes[0].set(xlabel="RL step", ylabel=SETUPS[env]["ylabel"], title=f"{env} episodes")
    axes[1].set(xlabel="RL step", ylabel=second.replace("_", " "))
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    figure = ROOT / f"docs/figures/agents_{env}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("env", choices=sorted(SETUPS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--n-prompts", type=int, default=128, help="held-out prompts of the final `alignkit eval --env` numbers")
    parser.add_argument("--copying", type=Path, metavar="MODEL", help="calculator: only measure how often MODEL copies the expression and the result")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every RL run, e.g. train.lr=2e-3")
    args = parser.parse_intermixed_args()
    if args.copying is not None:
        print(json.dumps(copying(args.copying), indent=1))
        return
    summary = run(args.env, args.steps, args.out or ROOT / f"runs/agents/evidence-{args.env}", args.overrides, args.n_prompts)
    print(plot(args.env, summary))
    print(json.dumps({k: (v if k == "start" else v["end"]) for k, v in summary.items()}, indent=1))


if __name__ == "__main__":
    main()

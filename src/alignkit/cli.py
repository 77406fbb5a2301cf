"""The ``alignkit`` command line: train, demo, generate, eval, eval-rm, iterate, bench, options, methods, tiny, critique, fetch-model, convert-gguf."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .core.memory import retain_freed_memory

app = typer.Typer(
    help="alignkit: align causal language models from feedback (SFT, DPO and the preference family, ...).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _user_errors():
    from .config import ConfigError
    from .data.records import DataError
    from .engine.checkpoint import RunError

    return (ConfigError, DataError, FileNotFoundError, ValueError, ImportError, RunError)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="YAML recipe file (see recipes/)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. train.lr=3e-4 dpo.beta=0.2"),
) -> None:
    """Train with a recipe. Runs unchanged under `torchrun --nproc-per-node N -m alignkit.cli train ...`."""
    from .algorithms import train as run
    from .config import load_recipe

    try:
        config = load_recipe(recipe, overrides or [])
        final = run(config)
    except _user_errors() as e:
        _fail(_resume_message(e, "train", recipe, overrides), getattr(e, "exit_code", 2))
    typer.echo(f"final model: {final}")


def _resume_message(e: Exception, command: str, recipe: Path, overrides: Optional[list[str]]) -> str:
    """The error's message; for a stopped run (Interrupted) with the exact command that continues it."""
    from .engine.trainer import Interrupted

    message = str(e)
    if isinstance(e, Interrupted):
        again = " ".join([f"alignkit {command}", str(recipe), *[o for o in overrides or [] if not o.startswith("train.resume=")], "train.resume=true"])
        message = message.replace(Interrupted.RESUME, again)
    return message


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, help="Run folder for the demo's models, data and report (default runs/demo; runs/demo-real with --real)."),
    seed: int = typer.Option(0, help="Seed for every random choice."),
    quiet: bool = typer.Option(False, help="No progress output."),
    real: bool = typer.Option(False, "--real", help="The real-model demo: DPO of SmolLM2-135M-Instruct on its own product reviews, VADER gold reward (docs/real-models.md)."),
    model: Path = typer.Option(Path("models/smollm2"), help="--real: the model folder (alignkit fetch-model smollm2-135m-instruct --out models/smollm2)."),
    settings: list[str] = typer.Option([], "--set", help="--real: KEY=VALUE of a demo setting (train_prompts, eval_prompts, lr, beta, max_steps, ...; repeatable)."),
) -> None:
    """Build a tiny model, SFT it, DPO it on its own labelled samples, and report the gold-reward gain (--real: on SmolLM2)."""
    if real:
        from .pipelines.demo_real import run_real_demo, settings_from_overrides

        try:
            chosen = settings_from_overrides(settings, model=str(model), seed=seed)
            results = run_real_demo(out or Path("runs/demo-real"), chosen, quiet=quiet, progress=not quiet)
        except _user_errors() as e:
            _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        typer.echo(json.dumps({k: results[k] for k in ("start_gold_reward", "dpo_gold_reward", "gain", "dpo_kl_to_start", "seconds", "report")}, indent=1))
        return
    from .pipelines.demo import run_demo

    results = run_demo(out or Path("runs/demo"), seed=seed, quiet=quiet, progress=not quiet)
    typer.echo(json.dumps({k: results[k] for k in ("sft_gold_reward", "dpo_gold_reward", "gain", "dpo_kl_to_sft", "report")}, indent=1))


@app.command()
def generate(
    model: Path = typer.Argument(..., help="A saved model folder (full model or LoRA adapter)."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="A prompt (repeatable)."),
    prompts: Optional[Path] = typer.Option(None, help="A data file whose rows have a 'prompt' field."),
    n: int = typer.Option(1, help="Samples per prompt."),
    max_new_tokens: int = typer.Option(64),
    temperature: float = typer.Option(1.0),
    top_p: float = typer.Option(1.0),
    greedy: bool = typer.Option(False, help="Greedy decoding instead of sampling."),
    seed: int = typer.Option(0),
    backend: str = typer.Option(
        "auto", help="alignkit (KV-cache engine), hf (model.generate), vllm, or auto (vllm on a CUDA GPU when installed, else alignkit)."
    ),
    out: Optional[Path] = typer.Option(None, help="Write samples as JSON Lines here instead of printing."),
    strategy: Optional[str] = typer.Option(
        None, help="A decoding strategy (policy = model + strategy): sample, best_of_n, rejection, args, product, genarm, nudging, steer, value_guided, lookahead, w2s (docs/decoding.md)."
    ),
    strategy_option: Optional[list[str]] = typer.Option(
        None, "--strategy-option", "-O", help="KEY=VALUE option of the strategy (repeatable; YAML values), e.g. N=8 reward=gold."
    ),
    chat_template: bool = typer.Option(
        True, "--chat-template/--no-chat-template",
        help="Render a plain-text prompt as a user message with the tokenizer's chat template and generation prompt (when it has one; "
        "not for the tiny models, trained on plain text); --no-chat-template feeds the raw text.",
    ),
) -> None:
    """Sample completions from a model, or from a model + decoding strategy (its cost and statistics go to stderr).
    Plain-text prompts are rendered with the chat template when the tokenizer has one (--no-chat-template: raw text)."""
    from .data.records import load_records, write_jsonl
    from .models.loading import load_policy_for_inference, load_tokenizer
    from .rollout.generate import as_chat_prompts, wraps_plain_prompts
    from .rollout.generate import generate as sample

    result = None
    try:
        texts = list(prompt or [])
        if prompts is not None:
            records, _ = load_records(prompts, kind="prompt")
            texts += [r["prompt"] for r in records]
        if not texts:
            _fail("give --prompt TEXT or --prompts FILE")
        if strategy is not None:
            from .decoding import check_strategy, decode_with, parse_options

            options = parse_options(strategy_option)
            check_strategy(strategy, options)
        elif strategy_option:
            _fail("--strategy-option needs --strategy NAME")
        policy = load_policy_for_inference(model)
        tokenizer = load_tokenizer(model)
        template = "auto" if chat_template else False
        if strategy is not None and not chat_template and wraps_plain_prompts(tokenizer):
            _fail("--no-chat-template with --strategy: the decoding strategies render plain-text prompts with the chat template; "
                  "drop --strategy or --no-chat-template")
        if strategy is not None:
            result = decode_with(strategy, policy, tokenizer, as_chat_prompts(tokenizer, texts, template), n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 greedy=greedy, seed=seed, backend=backend, **options)
            samples = result.samples
        else:
            samples = sample(policy, tokenizer, texts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy, seed=seed,
                             backend=backend, chat_template=template)
    except _user_errors() as e:
        _fail(str(e))
    rows = [{"prompt": texts[i // n], "completion": s.completion, "finished": s.finished} for i, s in enumerate(samples)]
    if out:  # the file also records the tokens the model saw (the chat template's rendering, or the raw text's)
        for row, s in zip(rows, samples):
            row.update(prompt_ids=list(s.prompt_ids), completion_ids=list(s.completion_ids))
    if result is not None and result.rewards is not None:
        for row, r in zip(rows, result.rewards):
            row["reward"] = r
    if out:
        write_jsonl(out, rows)
        typer.echo(f"wrote {len(rows)} samples to {out}")
    else:
        for row in rows:
            typer.echo(json.dumps(row, ensure_ascii=False))
    if result is not None:
        typer.echo(json.dumps({"strategy": strategy, "stats": result.stats, "cost": result.cost.as_dict()}, default=str), err=True)


def _is_reward_model(folder: Path) -> bool:
    """A reward model or ensemble folder (scored by `eval-rm`) rather than a policy."""
    if (folder / "ensemble.json").exists():
        return True
    config = folder / "config.json"
    if not config.exists():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures)


@app.command("eval")
def evaluate(
    target: Path = typer.Argument(..., help="A run folder (uses its final model) or a model folder."),
    reference: Optional[Path] = typer.Option(None, help="Reference model for KL (default: the run's starting model)."),
    task: Optional[str] = typer.Option(
        None, help="Built-in task whose gold reward scores the samples (default sentiment). With --env: the task whose test prompts start the "
        "episodes, a name or a mapping such as '{name: arithmetic, level: 3}' (default: the run's task, else arithmetic)."
    ),
    n_prompts: int = typer.Option(256, help="Held-out prompts."),
    samples: int = typer.Option(2, help="Samples per prompt."),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="Folder for eval.json and report.html (default: the run folder)."),
    strategy: Optional[str] = typer.Option(
        None, help="Evaluate model + this decoding strategy (sample, best_of_n, rejection, args, product, genarm, nudging, steer, value_guided, lookahead, w2s): gold reward, its KL, its cost."
    ),
    strategy_option: Optional[list[str]] = typer.Option(None, "--strategy-option", "-O", help="KEY=VALUE option of the strategy (repeatable)."),
    data: Optional[Path] = typer.Option(
        None, help="Evaluate on your own data instead of the task: pairs (implicit-reward and likelihood accuracy, margins), unpaired, sft or prompt rows."
    ),
    reward: Optional[str] = typer.Option(
        None, help="With --data: a reward source (module:function, a reward model folder, gold[:task], or a YAML mapping) scoring samples "
        "of the model and the reference on the data's prompts (mean reward, win rate, KL)."
    ),
    beta: Optional[float] = typer.Option(None, help="With --data: β of the implicit reward β·log(π/π_ref) (default: the run's dpo.beta, else 0.1)."),
    max_new_tokens: Optional[int] = typer.Option(
        None, help="With --data --reward: tokens per sample (default 64). With --env: tokens per turn (default: the run's rl.sampling.max_new_tokens, else 48)."
    ),
    chat_template: bool = typer.Option(
        True, "--chat-template/--no-chat-template", help="With --data --reward: render plain-text prompts with the chat template when sampling."
    ),
    env: Optional[str] = typer.Option(
        None, help="Evaluate an agent: play episodes of this environment (calculator, guess_number, self_correction or module:Class) and report "
        "success rate, turns, tool calls, invalid calls, regret. Default for a run trained with rl.env: its environment."
    ),
    env_option: Optional[list[str]] = typer.Option(None, "--env-option", "--env-params", "-E", help="With --env: KEY=VALUE option of the environment (repeatable; default: the run's rl.env.options)."),
    max_turns: Optional[int] = typer.Option(None, help="With --env: most assistant turns per episode (default: the run's rl.env.max_turns, else 4)."),
    max_tokens: Optional[int] = typer.Option(None, help="With --env: most tokens per trajectory (default: the run's rl.env.max_tokens, else 256)."),
    temperature: float = typer.Option(1.0, help="With --env: sampling temperature of the episodes."),
    backend: Optional[str] = typer.Option(
        None, help="With --env: the engine that plays the episodes: local (alignkit's KV-cache decoder, also 'alignkit'), hf (model.generate), "
        "vllm, or auto (vllm on a CUDA GPU when installed, else local; the default)."
    ),
    describe_tools: Optional[bool] = typer.Option(
        None, "--describe-tools/--no-describe-tools", help="With --env: show the tools' JSON schemas to the policy (default: the run's rl.env.describe_tools, else yes)."
    ),
    profiles: Optional[str] = typer.Option(
        None, help="Value-profile evaluation of a system-message-conditioned policy (docs/feedback.md): the profile set held_out, train, all or a "
        "JSON/JSONL file of {tone, length} profiles; per-profile reward on --n-prompts test prompts x --samples, written to eval-profiles.json."
    ),
) -> None:
    """Evaluate a policy on a built-in task (mean gold reward, KL to the reference, win rate, diversity,
    length, samples); a reward model is evaluated as by `eval-rm` (accuracy, calibration, gold correlation).
    With --strategy the policy is the model + a decoding strategy; its KL is to --reference (default: the
    run's starting model, or the model itself for a model folder). With --data FILE the model is evaluated on
    your data (and with --reward on samples for its prompts): a table on stdout, eval-<file name>.json,
    eval-<file name>.html and the samples in the --out folder (default: the run or model folder)."""
    from .evaluation.policy import evaluate_policy
    from .evaluation.report import write_report
    from .models.loading import load_policy_for_inference, load_tokenizer
    from .tasks import get_task

    if profiles is not None:
        from .evaluation.profiles import profile_table, run_profiles_eval

        try:
            report, written = run_profiles_eval(target, profiles, n_prompts, samples, seed, out)
        except _user_errors() as e:
            _fail(str(e))
        typer.echo(profile_table(report) + f"\nwrote {written}")
        return
    if env is not None or (env_option is None and strategy is None and data is None and reward is None and _run_env(target) is not None):
        if reward is not None or strategy is not None:
            _fail("--env plays episodes of the environment, which gives the rewards: drop --reward / --strategy")
        return _evaluate_agent(target, env, env_option, task, data, n_prompts, samples, max_new_tokens, max_turns, max_tokens, temperature, seed, out,
                               describe_tools, backend or "auto")
    if env_option or max_turns is not None or max_tokens is not None or describe_tools is not None or backend is not None:
        _fail("--env-option, --max-turns, --max-tokens, --describe-tools and --backend need --env NAME (or a run trained with rl.env)")
    task = task or "sentiment"
    if data is not None or reward is not None:
        max_new_tokens = 64 if max_new_tokens is None else max_new_tokens
        return _evaluate_on_data(target, data, reference, reward, beta, n_prompts, samples, max_new_tokens, seed, chat_template, out, strategy)
    try:
        options = None
        if strategy is not None:
            from .decoding import check_strategy, parse_options

            options = parse_options(strategy_option)
            check_strategy(strategy, options)
        elif strategy_option:
            _fail("--strategy-option needs --strategy NAME")
        model_dir, run_dir = target, None
        if (target / "config.yaml").exists() and (target / "final").exists():
            import yaml

            run_dir, model_dir = target, target / "final"
            if reference is None:
                config = yaml.safe_load((target / "config.yaml").read_text())
                start = config.get("model", {}).get("path") or str(target / "initial-model")
                reference = Path(start)
        if _is_reward_model(model_dir):
            return evaluate_reward_model(str(target), None, task=task, n_pairs=512, split="test", temperature=0.25, out=out)
        if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
            _fail(f"{model_dir}: not a model folder (no config.json) nor a run folder with final/")
        tokenizer = load_tokenizer(model_dir)
        policy = load_policy_for_inference(model_dir)
        ref_model = load_policy_for_inference(reference) if reference else None
        the_task = get_task(task)
        prompts = the_task.prompts(n_prompts, "test")
        result = evaluate_policy(model_dir.name, policy, tokenizer, the_task, prompts, reference=ref_model, n_samples=samples, seed=seed,
                                 strategy=strategy, strategy_options=options)
    except _user_errors() as e:
        _fail(str(e))
    folder = out or run_dir or model_dir
    folder.mkdir(parents=True, exist_ok=True)
    data = result.as_dict()
    data["reference"] = str(reference) if reference else None
    extra_blocks: list = []
    if strategy is not None:
        data.update(result.cost or {})
        data.update({f"strategy/{k}": v for k, v in (result.strategy_stats or {}).items() if not isinstance(v, (list, dict))})
        data["strategy_options"] = options
        data["reference"] = data["reference"] or f"{model_dir} (the model itself)"
    try:
        if strategy is not None:
            raise RuntimeError("skipped: the extra metrics evaluate the plain model, not model + strategy")
        from .engine.tracking import read_metrics
        from .evaluation.extras import run_metrics

        records = read_metrics(run_dir) if run_dir is not None else None
        extra, extra_blocks = run_metrics(
            policy, ref_model, tokenizer, the_task, n_prompts, samples, seed, run_dir, model_dir, reference, folder, records
        )
        data.update(extra)
    except Exception as e:  # noqa: BLE001 - the extra metrics never stop the basic evaluation
        data["extra_metrics_error"] = f"{type(e).__name__}: {e}"
    if result.warning:
        data["warning"] = result.warning
        typer.secho(f"warning: {result.warning}", fg=typer.colors.YELLOW, err=True)
    (folder / "eval.json").write_text(json.dumps(data, indent=1))
    summary = {k: v for k, v in data.items() if not isinstance(v, (list, dict))}
    write_report(folder, f"alignkit eval: {target}", [("Evaluation", summary), *extra_blocks, ("Samples", result.samples)])
    typer.echo(json.dumps(summary, indent=1))


def _evaluate_on_data(target: Path, data: Optional[Path], reference: Optional[Path], reward: Optional[str], beta: Optional[float], n_prompts: int,
                      samples: int, max_new_tokens: int, seed: int, chat_template: bool, out: Optional[Path], strategy: Optional[str]) -> None:
    """`alignkit eval MODEL --data FILE [--reward SPEC]`: the table, eval-<name>.json/.html and the samples."""
    from .evaluation.on_data import evaluate_on_data, format_table, write_data_eval
    from .evaluation.targets import resolve_target

    if data is None:
        _fail("--reward needs --data FILE (the prompts to sample); for a built-in task use --task")
    if strategy is not None:
        _fail("--strategy evaluates on a built-in task; drop it with --data")
    spec = reward
    if reward is not None and reward.lstrip().startswith("{"):
        import yaml

        spec = yaml.safe_load(reward)
    try:
        result = evaluate_on_data(target, data, reference=reference, reward=spec, beta=beta, n_prompts=n_prompts, samples_per_prompt=samples,
                                  max_new_tokens=max_new_tokens, seed=seed, chat_template="auto" if chat_template else False)
    except _user_errors() as e:
        _fail(str(e))
    resolved = resolve_target(target)
    paths = write_data_eval(result, out or resolved.run_dir or resolved.model_dir)
    typer.echo(format_table(result))
    for role, path in paths.items():
        typer.echo(f"{role}: {path}", err=True)


def _run_env(target: Path):
    from .evaluation.agents import run_env

    return run_env(target) if (target / "final").exists() else None


def _evaluate_agent(target: Path, env: Optional[str], env_option: Optional[list[str]], task: Optional[str], data: Optional[Path], n_prompts: int,
                    samples: int, max_new_tokens: Optional[int], max_turns: Optional[int], max_tokens: Optional[int], temperature: float, seed: int,
                    out: Optional[Path], describe_tools: Optional[bool] = None, backend: str = "auto") -> None:
    """`alignkit eval MODEL --env NAME`: agent metrics of episodes, a table, eval-env-<name>.json/.html."""
    from .decoding import parse_options
    from .envs import Limits
    from .evaluation.agents import agent_rows, evaluate_agent, format_agent_table, write_agent_eval
    from .evaluation.targets import resolve_target
    from .models.loading import load_policy_for_inference, load_tokenizer

    try:
        resolved = resolve_target(target)
        run = _run_env(target) or {}
        trained = run.get("env") or {}
        if env is not None and trained and env != trained.get("name"):
            trained = {}  # another environment than the run's: none of its settings apply
        name = env or trained["name"]
        options = {**(trained.get("options") or {}), **parse_options(env_option)} if env_option else dict(trained.get("options") or {})
        limits = Limits(max_turns=max_turns or trained.get("max_turns", 4), max_tokens=max_tokens or trained.get("max_tokens", 256),
                        reward=trained.get("reward", "sum"), tools=trained.get("tools"),
                        describe_tools=trained.get("describe_tools", True) if describe_tools is None else describe_tools,
                        truncated_reward=trained.get("truncated_reward"))
        the_task = task
        if task is not None and task.lstrip().startswith("{"):
            import yaml

            the_task = yaml.safe_load(task)
        rows = agent_rows(the_task if task is not None else run.get("task"), n_prompts, "test", data)
        model_dir = resolved.model_dir
        if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
            _fail(f"{model_dir}: not a model folder (no config.json) nor a run folder with final/")
        per_turn = max_new_tokens or (run.get("sampling") or {}).get("max_new_tokens") or 48
        result = evaluate_agent(load_policy_for_inference(model_dir), load_tokenizer(model_dir), name, rows, options, n_samples=samples,
                                max_new_tokens=per_turn, temperature=temperature, seed=seed, limits=limits, backend=backend)
    except _user_errors() as e:
        _fail(str(e))
    paths = write_agent_eval(result, out or resolved.run_dir or resolved.model_dir, f"alignkit eval --env {name}: {target}")
    typer.echo(format_agent_table(result))
    if result.warning:
        typer.secho(f"warning: {result.warning}", fg=typer.colors.YELLOW, err=True)
    for role, path in paths.items():
        typer.echo(f"{role}: {path}", err=True)


@app.command("eval-rm")
def evaluate_reward_model(
    model: str = typer.Argument(
        ..., help="A reward source: a run folder (uses final/), a reward model or ensemble folder, 'gold' or module:function."
    ),
    data: Optional[Path] = typer.Argument(None, help="Held-out preference pairs (prompt, chosen, rejected[, margin]); default: the task's pairs."),
    task: Optional[str] = typer.Option(
        None, help="Built-in task for gold-reward correlation and the Bayes limit (default: sentiment when DATA is not given)."
    ),
    n_pairs: int = typer.Option(512, help="Pairs generated by the task when DATA is not given."),
    split: str = typer.Option("test", help="Task split for generated pairs."),
    temperature: float = typer.Option(0.25, help="Bradley-Terry temperature of the task's labels (for the Bayes limit)."),
    out: Optional[Path] = typer.Option(None, help="Folder for reward_eval.json and report.html (default: the run/model folder)."),
) -> None:
    """Evaluate a reward model: pairwise accuracy, calibration (ECE), accuracy by margin, gold correlation."""
    from .config import TaskConfig
    from .data.records import load_records
    from .evaluation.reward_model import evaluate_pairs, write_reward_eval
    from .rewards import build_reward_source
    from .tasks import get_task, task_rows

    try:
        path = Path(model)
        folder = path if path.exists() else None
        if path.exists() and (path / "config.yaml").exists() and (path / "final").exists():
            model = str(path / "final")
        source = build_reward_source(model)
        if data is None and task is None:
            task = "sentiment"
        the_task = get_task(task) if task else None
        if data is not None:
            records, _ = load_records(data, kind="pair")
            rows = [{**{k: r[k] for k in ("prompt", "chosen", "rejected", "margin") if k in r},
                     **{k: v for k, v in (r.get("meta") or {}).items() if k in ("group", "user")}} for r in records]
            if the_task is not None and not all(isinstance(r["prompt"], str) for r in rows):
                the_task = None
        else:
            if the_task is None:
                _fail("give DATA or --task")
            rows = task_rows(the_task, "pair", n_pairs, split, TaskConfig(name=task, label_temperature=temperature))
        result = evaluate_pairs(source, rows, task=the_task, temperature=temperature if the_task is not None else None)
    except _user_errors() as e:
        _fail(str(e))
    result["model"], result["data"] = str(model), str(data) if data else f"<task {task}:{split}>"
    target = out or folder or Path(".")
    write_reward_eval(target, f"alignkit eval-rm: {model}", result)
    typer.echo(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))


@app.command()
def iterate(
    recipe: Path = typer.Argument(..., help="YAML recipe with an iterate: section (see recipes/iterative_dpo.yaml, spin, raft, rso, dno)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. iterate.rounds=2 iterate.builder=all_pairs dpo.loss=ipo"),
) -> None:
    """Iterative alignment: rounds of sample from the live policy, judge, build examples, train in one trainer, update the reference, evaluate."""
    from .config import load_recipe
    from .loops import iterate as run

    try:
        result = run(load_recipe(recipe, overrides or []))
    except _user_errors() as e:  # a stopped run: the command that continues it at its round and step
        _fail(_resume_message(e, "iterate", recipe, overrides), getattr(e, "exit_code", 2))
    gold = lambda e: None if e is None else round(e["gold_reward"], 4)  # noqa: E731
    rounds = [{"round": r["round"], "examples": r["examples"], "steps": r["steps"], "gold_reward": gold(r["eval"]),
               "kl": None if r["eval"] is None or r["eval"]["kl"] is None else round(r["eval"]["kl"], 3),
               **({"unparseable": r["judge/unparseable"]} if "judge/unparseable" in r else {})} for r in result["rounds"]]
    typer.echo(json.dumps({"start_gold_reward": gold(result["start"]), "rounds": rounds, "final": result["final"], "provenance": result["rounds_dir"]}, indent=1))


@app.command()
def bench(
    suite: Path = typer.Argument(..., help="Suite YAML (see recipes/bench/): a task, a start model, methods to compare."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides of the suite, e.g. output_dir=runs/b eval.prompts=64"),
    quiet: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Run several algorithms on a task; draw gold reward vs KL, proxy vs gold (over-optimisation), report."""
    from .pipelines.bench import run_bench

    try:
        result = run_bench(suite, overrides or [], quiet=quiet)
    except _user_errors() as e:
        _fail(str(e))
    keys = ("method", "run", "step", "gold_reward", "kl_k1", "win_rate", "proxy", "length")
    finals = [{k: p[k] for k in keys if k in p} for p in result["points"] if p.get("final") or p["method"] == "start"]
    typer.echo(json.dumps({"figures": result["figures"], "final_points": finals, "seconds": round(result["seconds"], 1)}, indent=1, default=str))


@app.command()
def options(
    section: Optional[str] = typer.Argument(None, help="A recipe section (model, data, train, dpo, rl, rl.sampling.vllm, ...); all when omitted."),
) -> None:
    """List recipe options: key, type, default and meaning (the text of docs/options.md)."""
    from .config import ConfigError, options_reference

    try:
        typer.echo(options_reference(section))
    except ConfigError as e:
        _fail(str(e))


@app.command()
def methods(
    family: Optional[str] = typer.Option(None, "--family", help="Only this family (e.g. 'online RL'); all when omitted."),
    as_json: bool = typer.Option(False, "--json", help="One JSON list: name, family, paper, run (argv), covers, command."),
) -> None:
    """Every method alignkit implements: family, paper, and the command that runs it."""
    from .catalog import methods as catalogue

    try:
        rows = catalogue(family)
    except ValueError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps([m.as_dict() for m in rows], indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("family", "method", "paper", "command", show_lines=False)
    for m in rows:
        table.add_row(m.family, m.name, m.paper, m.command)
    Console(width=200).print(table)


@app.command()
def tiny(
    out: Path = typer.Argument(..., help="Folder for the tokenizer and model."),
    arch: str = typer.Option("llama", help="llama or qwen2"),
    hidden_size: int = typer.Option(64),
    num_layers: int = typer.Option(2),
    num_heads: int = typer.Option(4),
) -> None:
    """Build a tiny tokenizer + randomly initialised causal LM on the built-in task's text (offline)."""
    from .config import TinyModelConfig
    from .models.tiny import build_tiny
    from .tasks import get_task

    try:
        config = TinyModelConfig(arch=arch, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads)
    except Exception as e:  # noqa: BLE001 - pydantic validation
        _fail(str(e))
    typer.echo(f"built {build_tiny(out, get_task().corpus(), config)}")


@app.command()
def critique(
    model: Path = typer.Argument(..., help="Model folder whose samples are judged (e.g. runs/sft/final)."),
    out: Path = typer.Option(..., "--out", "-o", help="JSON Lines file for the rows."),
    task: str = typer.Option("sentiment", help="Built-in task whose prompts are sampled and whose critic judges (sentiment, arithmetic)."),
    kind: str = typer.Option("critique", help="Row kind: critique (critique text, revision, label, score) or spans (good/bad character spans + critique)."),
    n: int = typer.Option(256, help="Prompts sampled."),
    samples: int = typer.Option(1, help="Completions per prompt."),
    split: str = typer.Option("train", help="Task split of the prompts (train, eval, test)."),
    seed: int = typer.Option(0, help="Seed of the samples and of the revisions' word choices."),
    max_new_tokens: int = typer.Option(48, help="Most tokens per sample."),
) -> None:
    """Language-feedback data from a model's own samples: each sample judged by the task's programmatic critic (docs/feedback.md)."""
    from .algorithms.feedback import critique_samples

    try:
        rows = critique_samples(model, task, n, split, kind, samples=samples, seed=seed, max_new_tokens=max_new_tokens, out=out)
    except _user_errors() as e:
        _fail(str(e))
    negative = sum(1 for r in rows if not r.get("label", not any(s["label"] == "bad" for s in r.get("spans", []))))
    typer.echo(f"wrote {len(rows)} {kind} rows ({negative} with a negative judgment) to {out}")


def _convert(source: Path, out: Path, dtype: str, force: bool, quiet: bool) -> None:
    from .models.convert import conversion_info, convert_gguf

    try:
        folder = convert_gguf(source, out, dtype=dtype, overwrite=force, quiet=quiet)
    except _user_errors() as e:
        _fail(str(e))
    info = conversion_info(folder)
    typer.echo(json.dumps({"model": str(folder), "source": info["source"], "dtype": info["dtype"], "parameters": info["parameters"],
                           "megabytes": round(info["bytes"] / 1e6), "seconds": info["seconds"]}, indent=1))


@app.command("fetch-model")
def fetch_model(
    name: str = typer.Argument(..., help="A model shipped in a PyPI package: smollm2-135m-instruct (pip install 'alignkit[real]')."),
    out: Path = typer.Option(..., "--out", help="Folder for the converted model (written atomically)."),
    dtype: str = typer.Option("float32", help="Weight dtype of the saved model: float32 or bfloat16."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
    quiet: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Get a real pretrained model offline: find its GGUF file in the installed PyPI package and convert it to a plain transformers folder."""
    from .models.convert import find_packaged_model

    try:
        source = find_packaged_model(name)
    except _user_errors() as e:
        _fail(str(e))
    _convert(source, out, dtype, force, quiet)


@app.command("convert-gguf")
def convert_gguf_file(
    file: Path = typer.Argument(..., help="A .gguf model file (transformers dequantises it; needs the gguf package)."),
    out: Path = typer.Option(..., "--out", help="Folder for the converted model (written atomically)."),
    dtype: str = typer.Option("float32", help="Weight dtype of the saved model: float32 or bfloat16."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
    quiet: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Convert a GGUF file into a plain transformers folder (safetensors, tokenizer and chat template, no quantization_config)."""
    _convert(file, out, dtype, force, quiet)


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    retain_freed_memory()  # large CPU tensors reuse mapped pages instead of faulting every step (core/memory.py)
    try:
        app()
    except SystemExit as done:
        code = done.code
    else:
        code = 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun the work is finished (files written and closed, process group destroyed), but
        # interpreter finalization can still race torch's gloo / autograd worker threads and abort with
        # "terminate called without an active exception" (now and then here; pytorch/pytorch#190489).
        # Leave without finalization so a finished run exits with its own status.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))
    raise SystemExit(code)


if __name__ == "__main__":
    main()

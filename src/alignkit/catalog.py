"""Every method alignkit implements: its family, its paper and the command that runs it (``alignkit methods``).

Each :class:`Method` names the registry entries it covers (``"pairwise:ipo"``: the ``ipo`` entry of the
pairwise-loss registry). ``tests/test_catalog.py`` keeps the catalogue complete — every name in every
registry listed in :data:`COVERED` belongs to some method — and checks that each method's command is
valid (its recipe exists and loads with its overrides, its decoding strategy is registered).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    paper: str
    run: tuple[str, ...]  # the argv after ``alignkit``: ("train", "recipes/dpo.yaml", "dpo.loss=ipo")
    covers: tuple[str, ...] = ()  # "registry:entry" keys (see COVERED)

    @property
    def command(self) -> str:
        return shlex.join(("alignkit", *self.run))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "command": self.command}


# registry prefix -> (module, attribute) of the registry whose names the catalogue must cover
COVERED: dict[str, tuple[str, str]] = {
    "algorithm": ("alignkit.algorithms", "ALGORITHMS"),
    "pairwise": ("alignkit.objectives", "PAIRWISE_LOSSES"),
    "unpaired": ("alignkit.objectives", "UNPAIRED_LOSSES"),
    "listwise": ("alignkit.objectives", "LISTWISE_LOSSES"),
    "selfplay": ("alignkit.objectives", "SELFPLAY_LOSSES"),
    "estimator": ("alignkit.algorithms.rl.estimators", "ESTIMATORS"),
    "policy_loss": ("alignkit.objectives", "POLICY_LOSSES"),
    "reward_type": ("alignkit.algorithms.reward.base", "REWARD_TYPES"),
    "builder": ("alignkit.loops.builders", "BUILDERS"),
    "judge": ("alignkit.loops.judges", "JUDGES"),
    "decoding": ("alignkit.decoding.base", "STRATEGIES"),
    "feedback": ("alignkit.algorithms.feedback", "FEEDBACK_METHODS"),
    "environment": ("alignkit.envs", "ENVIRONMENTS"),
    "tool": ("alignkit.envs", "TOOLS"),
}


def _dpo(name: str, paper: str, loss: str, *extra: str) -> Method:
    return Method(name, "offline preference", paper, ("train", "recipes/dpo.yaml", f"dpo.loss={loss}", *extra), (f"pairwise:{loss}",))


def _rl(name: str, paper: str, estimator: str, *extra: str, covers: tuple[str, ...] = ()) -> Method:
    return Method(name, "online RL", paper, ("train", "recipes/grpo.yaml", f"rl.estimator={estimator}", *extra), (f"estimator:{estimator}", *covers))


def _decode(name: str, paper: str, strategy: str, *options: str) -> Method:
    argv = ["generate", "runs/sft/final", "-p", "review of the soup :", "--strategy", strategy]
    for option in options:
        argv += ["-O", option]
    return Method(name, "inference-time", paper, tuple(argv), (f"decoding:{strategy}",))


METHODS: tuple[Method, ...] = (
    # demonstrations
    Method("SFT (prompt-masked, chat templates, packing)", "demonstrations", "Ouyang et al. 2022", ("train", "recipes/sft.yaml"), ("algorithm:sft",)),
    # offline preference
    Method("DPO", "offline preference", "Rafailov et al. 2023", ("train", "recipes/dpo.yaml"), ("algorithm:dpo", "pairwise:dpo")),
    _dpo("cDPO (label smoothing)", "Mitchell 2023", "dpo", "dpo.params={label_smoothing: 0.1}"),
    _dpo("IPO", "Azar et al. 2023", "ipo"),
    _dpo("SLiC (hinge)", "Zhao et al. 2023", "hinge"),
    _dpo("rDPO (robust to label noise)", "Chowdhury et al. 2024", "robust"),
    _dpo("EXO", "Ji et al. 2024", "exo"),
    _dpo("NCA", "Chen et al. 2024", "nca"),
    _dpo("BCO (pairwise)", "Jung et al. 2024", "bco"),
    _dpo("SPPO with hard labels", "Wu et al. 2024", "sppo_hard"),
    _dpo("APO-zero", "D'Oosterlinck et al. 2024", "apo_zero"),
    _dpo("APO-down", "D'Oosterlinck et al. 2024", "apo_down"),
    _dpo("DiscoPOP", "Lu et al. 2024", "discopop"),
    _dpo("length-normalised DPO", "-", "sigmoid_norm"),
    _dpo("AOT (paired)", "Melnyk et al. 2024", "aot"),
    _dpo("AOT (unpaired)", "Melnyk et al. 2024", "aot_unpaired"),
    _dpo("SimPO (reference-free)", "Meng et al. 2024", "simpo", "dpo.beta=2.0"),
    _dpo("ORPO (reference-free)", "Hong et al. 2024", "orpo"),
    _dpo("CPO", "Xu et al. 2024", "cpo"),
    _dpo("RPO (DPO + NLL)", "Pang et al. 2024", "rpo"),
    _dpo("f-DPO", "Wang et al. 2023", "f_dpo", "dpo.params={divergence: js}"),
    Method("TDPO1 / TDPO2", "offline preference", "Zeng et al. 2024", ("train", "recipes/dpo.yaml", "dpo.loss=tdpo2", "dpo.reference=model")),
    Method("WPO", "offline preference", "Zhou et al. 2024", ("train", "recipes/dpo.yaml", "dpo.wpo=true")),
    Method("LD-DPO", "offline preference", "Liu et al. 2024", ("train", "recipes/dpo.yaml", "dpo.ld_alpha=0.5")),
    Method("TR-DPO (reference refresh)", "offline preference", "Gorbatovski et al. 2024", ("train", "recipes/dpo.yaml", "dpo.reference_update=soft", "dpo.reference=model")),
    Method("MPO-style loss mixtures", "offline preference", "Wang et al. 2024", ("train", "recipes/dpo.yaml", "dpo.mix=[{loss: dpo, weight: 0.8}, {loss: bco, weight: 0.2}]")),
    Method("Curry-DPO (curriculum from rankings)", "offline preference", "Pattnaik et al. 2024", ("train", "recipes/dpo.yaml", "data.kind=ranked", "dpo.curriculum=true")),
    Method("KTO (thumbs up/down)", "offline preference", "Ethayarajh et al. 2024", ("train", "recipes/dpo.yaml", "algorithm=kto"), ("algorithm:kto", "unpaired:kto")),
    Method("BCO (thumbs up/down)", "offline preference", "Jung et al. 2024", ("train", "recipes/dpo.yaml", "algorithm=kto", "unpaired.loss=bco"), ("unpaired:bco",)),
    Method("APO-zero (unpaired)", "offline preference", "D'Oosterlinck et al. 2024",
           ("train", "recipes/dpo.yaml", "algorithm=kto", "unpaired.loss=apo_zero_unpaired"), ("unpaired:apo_zero_unpaired",)),
    # trajectories: multi-turn, tool-using conversations with the environment's tokens masked (docs/trajectories.md)
    Method("M-DPO (multi-turn DPO on trajectory pairs, tool/env tokens masked; any pairwise loss)", "offline preference",
           "Xiong et al. 2024", ("train", "recipes/trajectory/multiturn_dpo.yaml")),
    Method("M-KTO (multi-turn KTO on unpaired trajectories, tool/env tokens masked)", "offline preference",
           "Xiong et al. 2024", ("train", "recipes/trajectory/multiturn_kto.yaml")),
    Method("sandboxed unit-test code reward (rl.reward: code)", "online RL", "-", ("train", "recipes/trajectory/code_grpo.yaml")),
    Method("PRO (listwise)", "offline preference", "Song et al. 2023", ("train", "recipes/dpo.yaml", "algorithm=pro"), ("algorithm:pro", "listwise:pro")),
    # language feedback and conditioned training (docs/feedback.md)
    Method("Chain of Hindsight (feedback phrases in the sequence, answers trained)", "language feedback", "Liu et al. 2023",
           ("train", "recipes/feedback/hindsight.yaml"), ("algorithm:feedback", "feedback:hindsight")),
    Method("CUT (judgment-based unlikelihood on the tokens a negative judgment flags)", "language feedback", "Xu et al. 2023",
           ("train", "recipes/feedback/cut.yaml"), ("feedback:cut",)),
    Method("ILF (refine with the critique, select the best refinement, fine-tune)", "language feedback", "Scheurer et al. 2023",
           ("train", "recipes/feedback/ilf.yaml"), ("feedback:ilf",)),
    Method("C-RLFT (quality-class-conditioned weighted SFT, OpenChat)", "conditioned training", "Wang et al. 2023",
           ("train", "recipes/feedback/c_rlft.yaml"), ("feedback:c_rlft",)),
    Method("reward-augmented DPO (score-conditioned relabelled pairs)", "conditioned training", "Zhang et al. 2024",
           ("train", "recipes/feedback/reward_augmented.yaml"), ("feedback:reward_augmented",)),
    Method("MODPO (one objective's pairs + the other objectives' reward margins; sweep the weight for a front)", "conditioned training",
           "Zhou et al. 2024", ("train", "recipes/feedback/modpo.yaml"), ("feedback:modpo",)),
    Method("DPA (directional preference alignment: direction-conditioned rejection-sampling fine-tuning)", "conditioned training",
           "Wang et al. 2024", ("train", "recipes/feedback/dpa.yaml"), ("feedback:dpa",)),
    Method("DPA with the direction written as angle-bucket words (feedback.dpa.encoding: words), for models that cannot read decimals",
           "conditioned training", "Wang et al. 2024", ("train", "recipes/feedback/dpa.yaml", "feedback.dpa.encoding=words")),
    Method("Text2Grad span reward model (per-token good/neutral/bad from span annotations)", "language feedback", "Wang et al. 2025",
           ("train", "recipes/feedback/text2grad/reward.yaml"), ("reward_type:spans",)),
    Method("Text2Grad token-level PPO (span rewards on every token, into GAE)", "language feedback", "Wang et al. 2025",
           ("train", "recipes/feedback/text2grad/ppo.yaml")),
    Method("system-message / value-profile conditioned SFT (data.format: system; unseen profiles evaluated)", "conditioned training", "-",
           ("train", "recipes/feedback/profile_sft.yaml")),
    Method("system-message / value-profile conditioned DPO", "conditioned training", "-", ("train", "recipes/feedback/profile_dpo.yaml")),
    Method("value-profile evaluation on held-out profiles (alignkit eval --profiles)", "conditioned training", "-",
           ("eval", "runs/profile_sft", "--profiles", "held_out")),
    # reward modelling
    Method("Bradley-Terry reward model (+ margin, centring, regression)", "reward modelling", "Ouyang et al. 2022; Touvron et al. 2023",
           ("train", "recipes/reward.yaml"), ("algorithm:reward", "reward_type:scalar")),
    Method("reward-model ensembles (conservative mean - k std, min)", "reward modelling", "Coste et al. 2023", ("train", "recipes/reward.yaml", "reward.ensemble=3")),
    Method("pairwise preference model (PairRM-style)", "reward modelling", "Jiang et al. 2023", ("train", "recipes/reward.yaml", "reward.type=preference"), ("reward_type:preference",)),
    Method("multi-objective reward model with gating (ArmoRM-style)", "reward modelling", "Wang et al. 2024", ("train", "recipes/reward_multi_objective.yaml"), ("reward_type:multi_objective",)),
    Method("process / token-level reward model", "reward modelling", "Lightman et al. 2023", ("train", "recipes/reward_process.yaml"), ("reward_type:process",)),
    # pluralistic: many users and groups (docs/pluralistic.md)
    Method("MaxMin-RLHF reward: EM mixture of BT reward models over users", "pluralistic", "Chakraborty et al. 2024",
           ("train", "recipes/pluralistic/maxmin_reward.yaml"), ("reward_type:mixture",)),
    Method("MaxMin-RLHF policy: max-min over the mixture's heads with any online RL estimator", "pluralistic", "Chakraborty et al. 2024",
           ("train", "recipes/pluralistic/maxmin_grpo.yaml")),
    Method("PAL ideal-point mixture reward model (new users from a few pairs)", "pluralistic", "Chen et al. 2024",
           ("train", "recipes/pluralistic/pal_reward.yaml"), ("reward_type:pal",)),
    Method("VPL variational user-latent reward model", "pluralistic", "Poddar et al. 2024",
           ("train", "recipes/pluralistic/vpl_reward.yaml"), ("reward_type:vpl",)),
    Method("context-aware reward model r(context, x, y)", "pluralistic", "Pitis et al. 2024",
           ("train", "recipes/pluralistic/context_reward.yaml"), ("reward_type:context",)),
    Method("SALMON principle-following reward model r(principles, x, y); principles set at RL time", "pluralistic", "Sun et al. 2024",
           ("train", "recipes/pluralistic/principles_reward.yaml"), ("reward_type:principles",)),
    Method("SALMON RL: GRPO on the principle-following reward with the user's principles", "pluralistic", "Sun et al. 2024",
           ("train", "recipes/pluralistic/principles_grpo.yaml")),
    Method("SALMON RL with a principle list chosen in the recipe (rl.reward.principles; two principles)", "pluralistic", "Sun et al. 2024",
           ("train", "recipes/pluralistic/salmon_grpo.yaml")),
    Method("BRME: Bayesian multi-head reward ensemble (Gaussian heads, bootstrap, prior)", "pluralistic", "Yan et al. 2024",
           ("train", "recipes/pluralistic/brme_reward.yaml"), ("reward_type:brme",)),
    Method("reward-robust RLHF: lambda * nominal + (1 - lambda) * worst-case BRME reward", "pluralistic", "Yan et al. 2024",
           ("train", "recipes/pluralistic/brme_grpo.yaml")),
    Method("group-robust DPO (worst-group weighting, exponentiated gradient)", "pluralistic", "Ramesh et al. 2024",
           ("train", "recipes/pluralistic/group_dpo.yaml")),
    # online RL
    Method("PPO (critic, GAE, KL in reward, value clipping; PPO-max transforms)", "online RL", "Schulman et al. 2017; Ouyang et al. 2022; Zheng et al. 2023",
           ("train", "recipes/ppo.yaml"), ("algorithm:rl", "estimator:ppo", "policy_loss:ppo_clip")),
    _rl("GRPO", "Shao et al. 2024", "grpo"),
    _rl("Dr. GRPO", "Liu et al. 2025", "dr_grpo"),
    Method("DAPO (clip-higher, dynamic sampling, overlong shaping)", "online RL", "Yu et al. 2025", ("train", "recipes/dapo.yaml")),
    _rl("RLOO", "Ahmadian et al. 2024", "rloo"),
    _rl("ReMax", "Li et al. 2023", "remax"),
    _rl("REINFORCE", "Williams 1992", "reinforce", covers=("policy_loss:reinforce",)),
    _rl("REINFORCE++", "Hu 2025", "reinforce_pp", "rl.kl.in_reward=true", "rl.kl.beta=0.05"),
    _rl("REINFORCE++ with a group baseline", "Hu 2025", "reinforce_pp_baseline"),
    _rl("P3O (pairwise PPO)", "Wu et al. 2023", "p3o", "rl.sampling.group_size=2", "rl.policy.loss=auto", "rl.policy.aggregation=auto", covers=("policy_loss:p3o",)),
    _rl("CoPG (on- or off-policy)", "Flet-Berliac et al. 2024", "copg", "rl.sampling.group_size=2", "rl.kl.beta=0.05", "rl.policy.loss=auto", "rl.policy.aggregation=auto"),
    Method("MA-RLHF macro actions", "online RL", "Chai et al. 2024", ("train", "recipes/ppo.yaml", "rl.ppo.macro_len=4")),
    Method("CISPO policy loss", "online RL", "MiniMax 2025", ("train", "recipes/grpo.yaml", "rl.policy.loss=cispo"), ("policy_loss:cispo",)),
    Method("truncated importance sampling for rollout/trainer mismatch (TIS)", "online RL", "Yao et al. 2025", ("train", "recipes/grpo.yaml", "rl.off_policy.correction=tis")),
    Method("masked importance sampling (MIS, IcePop-style)", "online RL", "Ring-1T 2025", ("train", "recipes/grpo.yaml", "rl.off_policy.correction=mis")),
    Method("decoupled PPO objective (proximal vs behaviour policy)", "online RL", "Hilton et al. 2021", ("train", "recipes/ppo.yaml", "rl.off_policy.correction=decoupled")),
    Method("one-step-off asynchronous RL (staleness 1, importance-corrected)", "online RL", "Noukhovitch et al. 2024 (Asynchronous RLHF)",
           ("train", "recipes/scale/grpo_one_step_off.yaml")),
    Method("asynchronous RL with a staleness bound and partial rollouts", "online RL", "Fu et al. 2025 (AReaL); Piché et al. 2025 (PipelineRL)",
           ("train", "recipes/scale/grpo_async.yaml")),
    Method("Ray rollout and reward workers (colocated or disaggregated)", "online RL", "Moritz et al. 2018 (Ray); Hu et al. 2024 (OpenRLHF)",
           ("train", "recipes/scale/grpo_ray.yaml")),
    Method("FSDP2 online RL (rollouts from a gathered full-weights replica)", "online RL", "Zhao et al. 2023 (PyTorch FSDP)",
           ("train", "recipes/scale/fsdp_grpo.yaml")),
    Method("FSDP2 with LoRA adapters", "offline preference", "Zhao et al. 2023 (PyTorch FSDP); Hu et al. 2021 (LoRA)",
           ("train", "recipes/scale/fsdp_dpo_lora.yaml")),
    Method("DeepSpeed ZeRO-2/3 online RL", "online RL", "Rajbhandari et al. 2020 (ZeRO)", ("train", "recipes/scale/deepspeed_grpo.yaml")),
    Method("DeepSpeed ZeRO with LoRA adapters", "offline preference", "Rajbhandari et al. 2020 (ZeRO); Hu et al. 2021 (LoRA)",
           ("train", "recipes/scale/deepspeed_dpo_lora.yaml")),
    Method("vLLM server rollouts (separate process, weights sent after each update)", "online RL", "Kwon et al. 2023 (vLLM)",
           ("train", "recipes/scale/vllm_server_grpo.yaml")),
    Method("GSPO policy loss", "online RL", "Zheng et al. 2025", ("train", "recipes/grpo.yaml", "rl.policy.loss=gspo"), ("policy_loss:gspo",)),
    # iterative and self-play
    Method("iterative / online DPO (best-vs-worst pairs)", "iterative and self-play", "Xu et al. 2023; Xiong et al. 2024",
           ("iterate", "recipes/iterative_dpo.yaml"), ("builder:best_vs_worst", "judge:gold")),
    Method("iterative DPO, all pairs", "iterative and self-play", "Xu et al. 2023", ("iterate", "recipes/iterative_dpo.yaml", "iterate.builder=all_pairs"), ("builder:all_pairs",)),
    Method("iterative DPO, random pairs", "iterative and self-play", "Xiong et al. 2024", ("iterate", "recipes/iterative_dpo.yaml", "iterate.builder=random_pairs"), ("builder:random_pairs",)),
    Method("SPIN", "iterative and self-play", "Chen et al. 2024", ("iterate", "recipes/spin.yaml"), ("builder:spin", "judge:none")),
    Method("RAFT / RSF (best-of-K, then SFT)", "iterative and self-play", "Dong et al. 2023", ("iterate", "recipes/raft.yaml"), ("builder:best_of_k",)),
    Method("RSO (statistical rejection sampling)", "iterative and self-play", "Liu et al. 2023", ("iterate", "recipes/rso.yaml"), ("builder:rso",)),
    Method("DNO-Prct (large-margin pairs)", "iterative and self-play", "Rosset et al. 2024", ("iterate", "recipes/dno.yaml"), ("builder:large_margin",)),
    Method("SPPO (win-rate regression)", "iterative and self-play", "Wu et al. 2024", ("iterate", "recipes/sppo.yaml"),
           ("algorithm:sppo", "selfplay:sppo", "builder:win_rate", "judge:preference")),
    Method("online DPO / OAIF (fresh pairs every step, fixed reference)", "iterative and self-play", "Guo et al. 2024", ("iterate", "recipes/online_dpo.yaml")),
    Method("XPO (exploration term on the reference's samples)", "iterative and self-play", "Xie et al. 2024", ("iterate", "recipes/xpo.yaml"), ("builder:vs_opponent",)),
    Method("Nash-MD (policy gradient against the geometric-mixture opponent)", "iterative and self-play", "Munos et al. 2023", ("iterate", "recipes/nash_md.yaml"),
           ("selfplay:nash_md", "builder:win_rate_vs_opponent")),
    Method("online IPO (soft preference on fresh policy pairs)", "iterative and self-play", "Calandriello et al. 2024", ("iterate", "recipes/selfplay/online_ipo.yaml"),
           ("selfplay:online_ipo", "builder:soft_pairs")),
    Method("IPO-MD (online IPO on geometric-mixture pairs)", "iterative and self-play", "Calandriello et al. 2024", ("iterate", "recipes/selfplay/ipo_md.yaml")),
    Method("INPO (no-regret pair regression, geometric reference)", "iterative and self-play", "Zhang et al. 2024", ("iterate", "recipes/selfplay/inpo.yaml")),
    Method("EGPO (extragradient online IPO)", "iterative and self-play", "Zhou et al. 2025", ("iterate", "recipes/selfplay/egpo.yaml")),
    Method("accelerated preference optimisation (Nesterov reference)", "iterative and self-play", "He et al. 2024", ("iterate", "recipes/selfplay/apo.yaml")),
    Method("SELM (optimistic term on the reference's samples)", "iterative and self-play", "Zhang et al. 2024", ("iterate", "recipes/selfplay/selm.yaml")),
    Method("VPO (value-incentivised optimism on the implicit reward)", "iterative and self-play", "Cen et al. 2024", ("iterate", "recipes/selfplay/vpo.yaml")),
    Method("HyPO (offline DPO + online reverse KL on own samples)", "iterative and self-play", "Song et al. 2024", ("iterate", "recipes/selfplay/hypo.yaml"),
           ("builder:hypo",)),
    Method("SPO (win rate against the group as the online-RL reward)", "iterative and self-play", "Swamy et al. 2024", ("train", "recipes/selfplay/spo.yaml")),
    Method("CREAM (consistency-regularised self-rewarding)", "iterative and self-play", "Wang et al. 2024", ("iterate", "recipes/selfplay/cream.yaml"),
           ("judge:cream", "builder:cream")),
    Method("OSP soft labels (judged preference strength, soft DPO)", "iterative and self-play", "Zhai et al. 2024", ("iterate", "recipes/selfplay/osp.yaml"),
           ("selfplay:soft_dpo",)),
    Method("judge: a reward source (reward model, function)", "iterative and self-play", "-",
           ("iterate", "recipes/iterative_dpo.yaml", "iterate.judge={type: reward, source: gold}"), ("judge:reward",)),
    Method("judge: LLM-as-judge (self-rewarding)", "iterative and self-play", "Yuan et al. 2024",
           ("iterate", "recipes/iterative_dpo.yaml", "iterate.judge={type: llm, model: policy, mode: score}"), ("judge:llm",)),
    Method("self-rewarding LM (IFT + EFT start, the policy judges its own samples)", "iterative and self-play", "Yuan et al. 2024",
           ("iterate", "recipes/selfplay/self_rewarding.yaml")),
    Method("teacher completions in the judged pool (iterate.teacher)", "iterative and self-play", "-",
           ("iterate", "recipes/selfplay/teacher.yaml")),
    # agents: multi-turn environments and tools (docs/agents.md)
    Method("tool-use RL: GRPO over calculator episodes (calc tool, Hermes tool calls)", "agents", "Schick et al. 2023; Li et al. 2025 (ToRL)",
           ("train", "recipes/agents/calculator_grpo.yaml"), ("environment:calculator", "tool:calc")),
    Method("multi-turn game with feedback (guess the number; regret)", "agents", "Nie et al. 2024 (EVOLvE)",
           ("train", "recipes/agents/guess_number_grpo.yaml"), ("environment:guess_number",)),
    Method("multi-turn PPO with per-turn rewards (GAE over policy tokens only)", "agents", "Zhou et al. 2024 (ArCHer); Schulman et al. 2017",
           ("train", "recipes/agents/guess_number_grpo.yaml", "rl.estimator=ppo", "rl.env.credit=turn")),
    Method("SCoRe stage I: second-turn reward, first turn held to the base by a KL", "agents", "Kumar et al. 2024",
           ("train", "recipes/agents/self_correction.yaml"), ("environment:self_correction",)),
    Method("SCoRe stage II: both turns with the progress bonus alpha (r2 - r1)", "agents", "Kumar et al. 2024",
           ("train", "recipes/agents/self_correction.yaml", "rl.env.first_turn_kl=0", "rl.env.reward=sum",
            "rl.env.options={first_turn_weight: 1.0, progress_bonus: 1.0}")),
    Method("agent evaluation: success rate, turns, tool calls, invalid calls, regret over episodes", "agents", "-",
           ("eval", "runs/agents/calculator-grpo", "--n-prompts", "128")),
    # inference-time
    _decode("sampling (the plain policy)", "-", "sample"),
    _decode("best-of-N (analytic KL beside a sampled estimate)", "Stiennon et al. 2020; Beirami et al. 2024", "best_of_n", "N=4"),
    _decode("rejection sampling toward pi exp(r / beta)", "Liu et al. 2024", "rejection", "N=8", "beta=0.5"),
    _decode("ARGS reward-guided decoding", "Khanov et al. 2024", "args", "k=10", "w=2"),
    _decode("product of experts / GenARM rule", "Xu et al. 2025", "product", "guide=runs/sft/final", "alpha=0.5"),
    _decode("GenARM (autoregressive reward models, run-time weights)", "Xu et al. 2025", "genarm", "arm=runs/decoding-arm/final", "beta=0.5"),
    _decode("GenARM with ARMs on one scale (log-probs standardised under the base, ours)", "Xu et al. 2025 (scale: ours)", "genarm",
            "arm=[runs/arm-a/final,runs/arm-b/final]", "weights=[0.5,0.5]", "beta=2", "scale=std"),
    Method("GenARM autoregressive reward model (token log-probs sum to the reward, BT on pairs)", "reward modelling", "Xu et al. 2025",
           ("train", "recipes/decoding/arm.yaml"), ("reward_type:arm",)),
    _decode("nudging (a small aligned model writes where the base is unsure)", "Fei et al. 2024", "nudging", "nudger=runs/dpo/final", "gamma=0.4"),
    _decode("nudging by whole words (the paper's unit)", "Fei et al. 2024", "nudging", "nudger=runs/dpo/final", "gamma=0.4", "unit=word"),
    _decode("activation steering (CAA, layer search; negative alpha as an attack)", "Rimsky et al. 2024; Turner et al. 2023", "steer", "alpha=4"),
    _decode("controlled decoding, CD-FUDGE (prefix value on base rollouts)", "Mudgal et al. 2024; Yang & Klein 2021", "value_guided", "value=fit", "lam=1.0"),
    _decode("value augmented sampling, VAS (TD(lambda) value)", "Han et al. 2024", "value_guided", "value=fit", "lam=0.8"),
    _decode("Transfer Q* (value from an aligned baseline's rollouts)", "Chakraborty et al. 2024", "value_guided", "value=fit", "fit_from=runs/dpo/final"),
    _decode("Transfer Q* indirect transfer (baseline aligned to another reward, importance-weighted value)", "Chakraborty et al. 2024",
            "value_guided", "value=fit", "fit_from=runs/dpo/final", "transfer=indirect", "transfer_beta=1.0"),
    _decode("DeAL lookahead search (reward or keyword / length constraints)", "Huang et al. 2024", "lookahead", "keywords=[great]", "length=12"),
    _decode("weak-to-strong search (beam search on a small DPO pair's implicit reward)", "Zhou et al. 2024", "w2s", "tuned=runs/dpo/final",
            "untuned=runs/sft/final"),
)


def families() -> list[str]:
    return list(dict.fromkeys(m.family for m in METHODS))


def methods(family: str | None = None) -> list[Method]:
    if family is not None and family not in families():
        raise ValueError(f"unknown family {family!r}; families: {', '.join(families())}")
    return [m for m in METHODS if family is None or m.family == family]

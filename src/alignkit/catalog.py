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
    Method("PRO (listwise)", "offline preference", "Song et al. 2023", ("train", "recipes/dpo.yaml", "algorithm=pro"), ("algorithm:pro", "listwise:pro")),
    # reward modelling
    Method("Bradley-Terry reward model (+ margin, centring, regression)", "reward modelling", "Ouyang et al. 2022; Touvron et al. 2023",
           ("train", "recipes/reward.yaml"), ("algorithm:reward", "reward_type:scalar")),
    Method("reward-model ensembles (conservative mean - k std, min)", "reward modelling", "Coste et al. 2023", ("train", "recipes/reward.yaml", "reward.ensemble=3")),
    Method("pairwise preference model (PairRM-style)", "reward modelling", "Jiang et al. 2023", ("train", "recipes/reward.yaml", "reward.type=preference"), ("reward_type:preference",)),
    Method("multi-objective reward model with gating (ArmoRM-style)", "reward modelling", "Wang et al. 2024", ("train", "recipes/reward_multi_objective.yaml"), ("reward_type:multi_objective",)),
    Method("process / token-level reward model", "reward modelling", "Lightman et al. 2023", ("train", "recipes/reward_process.yaml"), ("reward_type:process",)),
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
    Method("judge: a reward source (reward model, function)", "iterative and self-play", "-",
           ("iterate", "recipes/iterative_dpo.yaml", "iterate.judge={type: reward, source: gold}"), ("judge:reward",)),
    Method("judge: LLM-as-judge (self-rewarding)", "iterative and self-play", "Yuan et al. 2024",
           ("iterate", "recipes/iterative_dpo.yaml", "iterate.judge={type: llm, model: policy, mode: score}"), ("judge:llm",)),
    # inference-time
    _decode("sampling (the plain policy)", "-", "sample"),
    _decode("best-of-N (analytic KL beside a sampled estimate)", "Stiennon et al. 2020; Beirami et al. 2024", "best_of_n", "N=4"),
    _decode("rejection sampling toward pi exp(r / beta)", "Liu et al. 2024", "rejection", "N=8", "beta=0.5"),
    _decode("ARGS reward-guided decoding", "Khanov et al. 2024", "args", "k=10", "w=2"),
    _decode("product of experts / GenARM rule", "Xu et al. 2025", "product", "guide=runs/sft/final", "alpha=0.5"),
)


def families() -> list[str]:
    return list(dict.fromkeys(m.family for m in METHODS))


def methods(family: str | None = None) -> list[Method]:
    if family is not None and family not in families():
        raise ValueError(f"unknown family {family!r}; families: {', '.join(families())}")
    return [m for m in METHODS if family is None or m.family == family]

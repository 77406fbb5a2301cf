"""Typed recipe configuration: YAML files + dotted command-line overrides, checked before any work.

A recipe is a YAML file whose keys mirror :class:`Recipe`. ``alignkit train recipe.yaml train.lr=3e-4
dpo.beta=0.2`` applies overrides on top (values are parsed as YAML: ``true``, ``1e-4``, ``[a, b]``).
An unknown key or a bad value raises :class:`ConfigError` naming the key and what is allowed.

The sections live in small modules: :mod:`.sections` (model, task, data, train, sft, scale), :mod:`.rl`
(online RL), :mod:`.methods` (offline, feedback and iterative methods), :mod:`.recipe` (the whole recipe,
loading, the options reference); everything is importable from ``alignkit.config``.
"""

from .methods import (  # noqa: F401
    CRLFTConfig,
    CUTConfig,
    DPAConfig,
    DPOConfig,
    FeedbackConfig,
    HindsightConfig,
    ILFConfig,
    IterateConfig,
    ListwiseConfig,
    MODPOConfig,
    RewardAugmentedConfig,
    RewardConfig,
    SPPOConfig,
    TeacherConfig,
    UnpairedConfig,
)
from .recipe import (  # noqa: F401
    ALGORITHMS,
    ConfigError,
    Recipe,
    _sections,
    apply_overrides,
    dump_recipe,
    load_recipe,
    options_reference,
    parse_override,
)
from .rl import (  # noqa: F401
    GROUP_RELATIVE_ESTIMATORS,
    REWARD_TRANSFORMS,
    AdvantageConfig,
    AsyncConfig,
    DAPOConfig,
    EnvConfig,
    KLConfig,
    OffPolicyConfig,
    PolicyLossConfig,
    PPOConfig,
    RLConfig,
    SamplingConfig,
    UpdateConfig,
    VLLMConfig,
)
from .sections import (  # noqa: F401
    TINY_MIN_VOCAB,
    DataConfig,
    LoraConfig,
    ModelConfig,
    ScaleConfig,
    Section,
    SFTConfig,
    TaskConfig,
    TinyModelConfig,
    TrainConfig,
)

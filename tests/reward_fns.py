"""Reward functions loaded by tests through the `module:function` path (tests/ is on sys.path)."""


def soup_is_constant(prompts, completions):
    """1.0 for every 'soup' prompt (a zero-variance group), else the number of words."""
    return [1.0 if "soup" in p else float(len(c.split())) for p, c in zip(prompts, completions)]


def constant(prompts, completions):
    """The same reward for everything: every group has zero variance, so every GRPO advantage is 0."""
    return [0.5 for _ in completions]


def completion_length(prompts, completions):
    """The completion's length in characters (a reward whose mean and win rate a test can work out by hand)."""
    return [float(len(c)) for c in completions]

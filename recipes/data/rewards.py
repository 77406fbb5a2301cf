"""An example user reward for `rl.reward`, `iterate.judge` or `alignkit eval --reward`, loaded by file path:
`--reward ./recipes/data/rewards.py:warm_words`. A reward function takes the prompts and completions (lists of the
same length) and returns one number per completion."""

WARM = ("great", "good", "lovely", "tasty", "excellent", "fresh", "nice", "love")


def warm_words(prompts, completions):
    """How many warm words a completion uses, minus 1 for an empty one."""
    return [sum(c.lower().count(w) for w in WARM) if c.strip() else -1.0 for c in completions]

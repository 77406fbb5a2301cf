"""Controlled-sentiment generation in a synthetic language, with a known gold reward.

In the spirit of the DPO paper's controlled-sentiment task (IMDb prefixes, a sentiment classifier as the
gold reward), but small enough that a 2-layer model learns the language in about a minute on a CPU.

The language: a prompt names a topic (``"review of the soup :"``); a completion is one to three clauses,
each ``the <noun of the topic> was <adjective>`` joined by ``and``/``but``, ended by ``.``. Every adjective
carries a known sentiment value in [-1, 1]. The *gold reward* of a completion is the mean sentiment of the
adjectives it uses, minus a penalty for text that is not in the language (so a policy cannot win by
producing garbage). The base (SFT) distribution draws adjectives uniformly, so its mean gold reward is
about 0; an aligned policy should move it towards +1.

Everything is deterministic given a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .base import TASKS, TaskBase

TOPICS: dict[str, list[str]] = {
    "soup": ["soup", "bread", "staff", "price", "table"],
    "film": ["plot", "music", "actors", "ending", "camera"],
    "book": ["story", "hero", "cover", "pages", "style"],
    "trip": ["hotel", "beach", "guide", "weather", "food"],
    "phone": ["screen", "battery", "sound", "case", "charger"],
    "game": ["level", "story", "music", "controls", "boss"],
}

ADJECTIVES: dict[str, float] = {
    "superb": 1.0,
    "wonderful": 1.0,
    "great": 1.0,
    "lovely": 0.75,
    "good": 0.5,
    "fine": 0.25,
    "plain": 0.0,
    "okay": 0.0,
    "average": 0.0,
    "dull": -0.25,
    "poor": -0.5,
    "bad": -0.75,
    "awful": -1.0,
    "terrible": -1.0,
    "horrible": -1.0,
}

CONNECTORS = ("and", "but")
SENTIMENT_ATTRIBUTES = ("sentiment", "verbosity")  # the multi-objective reward model's default attributes
SENTIMENT_STEP_SPLIT = r"(?= (?:and|but) )"  # process rewards: a step per clause, cut before a connector


@TASKS.register("sentiment")
@dataclass
class SentimentTask(TaskBase):
    """The controlled-sentiment task: prompts, a base distribution for SFT data and the gold reward.

    Parameters
    ----------
    seed: seed for every sampler of the task.
    max_clauses: the largest number of clauses a base completion has.
    malformed_penalty: subtracted from the reward of a completion that is not in the language.
    """

    seed: int = 0
    max_clauses: int = 3
    malformed_penalty: float = 1.0
    name: str = field(default="sentiment", init=False)
    label_salt = "bt"
    reward_attributes = SENTIMENT_ATTRIBUTES
    reward_step_split = SENTIMENT_STEP_SPLIT

    # ----------------------------------------------------------------------------------------------
    # prompts and base distribution
    # ----------------------------------------------------------------------------------------------
    def prompt(self, topic: str) -> str:
        return f"review of the {topic} :"

    def prompts(self, n: int, split: str = "train") -> list[str]:
        """``n`` prompts; ``split`` selects a disjoint random stream (train/eval/test)."""
        rng = random.Random(f"{self.seed}-{split}-prompts")
        topics = sorted(TOPICS)
        return [self.prompt(rng.choice(topics)) for _ in range(n)]

    def topic_of(self, prompt: str) -> str | None:
        words = prompt.strip().split()
        if len(words) >= 4 and words[-1] == ":" and words[-2] in TOPICS:
            return words[-2]
        return None

    def sample_completion(self, prompt: str, rng: random.Random) -> str:
        topic = self.topic_of(prompt) or rng.choice(sorted(TOPICS))
        nouns = TOPICS[topic]
        adjectives = sorted(ADJECTIVES)
        clauses = []
        for i in range(rng.randint(1, self.max_clauses)):
            clause = f"the {rng.choice(nouns)} was {rng.choice(adjectives)}"
            if i:
                clause = f"{rng.choice(CONNECTORS)} {clause}"
            clauses.append(clause)
        return " " + " ".join(clauses) + " ."

    def sft_rows(self, n: int, split: str = "train") -> list[dict]:
        """SFT demonstrations drawn from the base distribution (neutral on average)."""
        rng = random.Random(f"{self.seed}-{split}-sft")
        rows = []
        for prompt in self.prompts(n, split):
            rows.append({"prompt": prompt, "completion": self.sample_completion(prompt, rng)})
        return rows

    def corpus(self, n: int = 2000) -> list[str]:
        """Text to train the tokenizer on."""
        return [r["prompt"] + r["completion"] for r in self.sft_rows(n, split="tokenizer")]

    # ----------------------------------------------------------------------------------------------
    # gold reward
    # ----------------------------------------------------------------------------------------------
    def parse(self, prompt: str, completion: str) -> list[str] | None:
        """The adjectives of ``completion`` if it is in the language (for ``prompt``'s topic), else None."""
        topic = self.topic_of(prompt)
        words = completion.strip().split()
        if not words or words[-1] != ".":
            return None
        words = words[:-1]
        adjectives = []
        i = 0
        while i < len(words):
            if adjectives:
                if words[i] not in CONNECTORS:
                    return None
                i += 1
            clause = words[i : i + 4]
            if len(clause) != 4 or clause[0] != "the" or clause[2] != "was" or clause[3] not in ADJECTIVES:
                return None
            if topic is not None and clause[1] not in TOPICS[topic]:
                return None
            adjectives.append(clause[3])
            i += 4
        return adjectives or None

    def gold_reward(self, prompt: str, completion: str) -> float:
        """Mean sentiment of the adjectives, in [-1, 1]; ``-1 - malformed_penalty`` for malformed text."""
        adjectives = self.parse(prompt, completion)
        if adjectives is None:
            return -1.0 - self.malformed_penalty
        return sum(ADJECTIVES[a] for a in adjectives) / len(adjectives)

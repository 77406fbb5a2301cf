"""Built-in gold-reward tasks: determinism, gold rewards by hand, label noise, intransitivity, YAML use."""

import pytest

from alignkit.config import TaskConfig, load_recipe
from alignkit.tasks import TASKS, flip_labels, get_task, task_rows
from alignkit.tasks.intransitive import IntransitiveTask
from alignkit.tasks.multi_objective import MultiObjectiveTask
from alignkit.tasks.pluralistic import PluralisticTask

P = "review of the soup :"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_is_deterministic_and_scores_its_own_data(name):
    config = TaskConfig(name=name, seed=3)
    a, b = get_task(config), get_task(config)
    assert task_rows(a, "pair", 16, "train", config) == task_rows(b, "pair", 16, "train", config)
    assert task_rows(a, "sft", 8, "train") == task_rows(b, "sft", 8, "train")
    rows = task_rows(a, "sft", 32, "train")
    rewards = a.gold_rewards([r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert len(rewards) == 32 and all(isinstance(r, float) for r in rewards)
    assert all(a.parse(r["prompt"], r["completion"]) is not None for r in rows)
    assert a.corpus(10)


def test_multi_objective_trades_off():
    task = MultiObjectiveTask()
    long_good = " the soup was superb and the bread was superb and the staff was superb ."
    short_good = " the soup was superb ."
    assert task.attribute_rewards(P, long_good) == {"sentiment": 1.0, "brevity": 0.0}
    assert task.attribute_rewards(P, short_good) == {"sentiment": pytest.approx(1 / 3), "brevity": 1.0}
    # 0.5/0.5: short wins (2/3 vs 1/2); 0.8/0.2: long wins (0.8 vs 0.467)
    assert task.gold_reward(P, short_good) > task.gold_reward(P, long_good)
    assert task.gold_reward(P, long_good, weights=(0.8, 0.2)) > task.gold_reward(P, short_good, weights=(0.8, 0.2))
    both = task.gold_rewards([P, P], [long_good, "garbage"], per_attribute=True)
    assert both["sentiment"] == [1.0, -2.0] and both["weighted"] == [0.5, -2.0]
    tuned = get_task(TaskConfig(name="multi_objective", objective_weights=(0.8, 0.2)))
    assert tuned.weights == (0.8, 0.2)


def test_pluralistic_groups_and_shares():
    task = PluralisticTask(minority_share=0.2)
    good = " the soup was great ."
    assert task.group_rewards(P, good) == {"majority": 1.0, "minority": -1.0}
    assert task.gold_reward(P, good) == pytest.approx(0.6)
    assert task.group_rewards(P, "nonsense") == {"majority": -2.0, "minority": -2.0}
    rows = task_rows(task, "pair", 2000, "train", TaskConfig(name="pluralistic"))
    share = sum(r["group"] == "minority" for r in rows) / len(rows)
    assert 0.17 < share < 0.23
    # the minority's labels prefer the more negative review
    minority = [r for r in rows if r["group"] == "minority"]
    neg = sum(task.group_rewards(r["prompt"], r["chosen"])["majority"] < task.group_rewards(r["prompt"], r["rejected"])["majority"] for r in minority)
    assert neg / len(minority) > 0.7


def test_intransitive_has_a_cycle_and_no_scalar_reward():
    task = IntransitiveTask()
    single = " the soup was good ."
    conj = " the soup was good and the bread was bad ."
    contrast = " the soup was good but the bread was bad ."
    assert [task.style(P, c) for c in (single, conj, contrast)] == ["single", "and", "but"]
    assert task.preference(P, single, conj) == pytest.approx(0.8)
    assert task.preference(P, conj, contrast) == pytest.approx(0.8)
    assert task.preference(P, contrast, single) == pytest.approx(0.8)  # the cycle
    for a in (single, conj, contrast, "junk"):
        for b in (single, conj, contrast, "junk"):
            assert task.preference(P, a, b) + task.preference(P, b, a) == pytest.approx(1.0)
    assert task.preference(P, "junk", single) == pytest.approx(0.05)
    assert sum(task.base_style_distribution().values()) == pytest.approx(1.0)
    # Borda score against the base: 'single' beats 'and' (1/4 of base) and loses to 'but' (5/12)
    assert task.gold_reward(P, single) == pytest.approx(1 / 3 * 0.5 + 0.25 * 0.8 + 5 / 12 * 0.2)


@pytest.mark.parametrize("name", ["sentiment", "arithmetic", "multi_objective", "pluralistic", "intransitive"])
def test_label_noise_flips_the_requested_share(name):
    clean = task_rows(get_task(TaskConfig(name=name)), "pair", 400, "train", TaskConfig(name=name))
    noisy = task_rows(get_task(TaskConfig(name=name)), "pair", 400, "train", TaskConfig(name=name, label_noise=0.3))
    assert [r["prompt"] for r in clean] == [r["prompt"] for r in noisy]
    flipped = sum(c["chosen"] != n["chosen"] for c, n in zip(clean, noisy)) / len(clean)
    assert 0.24 < flipped < 0.36


def test_flip_labels_edges():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 10
    assert flip_labels(rows, 0.0, 0) == rows
    assert all(r["chosen"] == "b" for r in flip_labels(rows, 1.0, 0))
    with pytest.raises(ValueError):
        flip_labels(rows, 1.5, 0)


def test_tasks_from_yaml_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("algorithm: dpo\ntask: {name: pluralistic, minority_share: 0.3, label_noise: 0.1}\n")
    recipe = load_recipe(path)
    task = get_task(recipe.task)
    assert isinstance(task, PluralisticTask) and task.minority_share == 0.3
    assert recipe.task.label_noise == 0.1
    with pytest.raises(ValueError, match="allowed: 'sentiment'"):
        load_recipe(path, ["task.name=nope"])

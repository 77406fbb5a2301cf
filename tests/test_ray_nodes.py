"""A two-node Ray cluster on one machine (ray.cluster_utils.Cluster: two raylets, one object store each, no network
between machines): recipes/scale/grpo_ray.yaml disaggregated with SPREAD placement puts its rollout workers on the
second node (node ids reported by the workers themselves) and still gives the single-process update."""

import os
import re
from pathlib import Path

import pytest
import ray
import torch
from ray.cluster_utils import Cluster
from safetensors.torch import load_file

from alignkit.algorithms import train
from alignkit.config import load_recipe

RECIPE = Path(__file__).parent.parent / "recipes" / "scale" / "grpo_ray.yaml"


def overrides(tmp_path, tiny_dir, name, *extra):
    return [f"model.path={tiny_dir}", f"train.output_dir={tmp_path / name}", "task.n_train=32", "task.n_eval=0", "train.max_steps=2",
            "train.batch_size=4", "train.eval_every=null", "train.log_every=1", "train.progress=false", "rl.sampling.max_new_tokens=8",
            "train.lr=3e-3", "rl.update.skip_zero_advantage=false", "rl.reward=reward_fns:soup_is_constant", *extra]


@pytest.mark.slow
def test_rollout_workers_land_on_the_second_node(tmp_path, tiny_dir, capsys, monkeypatch):
    tests = str(Path(__file__).parent)  # the reward worker imports reward_fns (tests/reward_fns.py)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    single = train(load_recipe(RECIPE, overrides(tmp_path, tiny_dir, "single", "scale.backend=none")))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the driver's node: no CPU for workers
    try:
        second = cluster.add_node(num_cpus=2, resources={"second_node": 1})
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        assert len({n["NodeID"] for n in ray.nodes() if n["Alive"]}) == 2
        head = cluster.head_node.node_id
        assert head != second.node_id
        capsys.readouterr()
        final = train(load_recipe(RECIPE, overrides(tmp_path, tiny_dir, "two-nodes", "scale.placement=disaggregated", "scale.placement_strategy=SPREAD",
                                                    "scale.rollout_workers=2", "scale.worker_cpus=1", "scale.address=null")))
        printed = capsys.readouterr().out
    finally:
        ray.shutdown()
        cluster.shutdown()
    line = next(x for x in printed.splitlines() if "rollout workers (scale.placement=disaggregated)" in x)
    nodes = re.findall(r"\d+ on node (\w+)", line)
    assert len(nodes) == 2 and all(second.node_id.startswith(n) for n in nodes), (line, second.node_id)
    assert not any(head.startswith(n) for n in nodes)  # the head node has no CPU for them: placed on the other raylet
    a, b = load_file(str(single / "model.safetensors")), load_file(str(final / "model.safetensors"))
    start = load_file(str(tiny_dir / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(a[name], start[name].to(a[name].dtype)) for name in a)

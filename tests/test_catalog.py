"""`alignkit methods`: the catalogue covers every registered method, and every command it shows is valid."""

import importlib
import json
from pathlib import Path

import pytest

from alignkit.catalog import COVERED, METHODS, families, methods

ROOT = Path(__file__).resolve().parents[1]


def _registry_names(prefix):
    module, attribute = COVERED[prefix]
    registry = getattr(importlib.import_module(module), attribute)
    return set(registry.names() if hasattr(registry, "names") else registry)


@pytest.mark.parametrize("prefix", sorted(COVERED))
def test_every_registered_entry_belongs_to_a_method(prefix):
    covered = {key.split(":", 1)[1] for m in METHODS for key in m.covers if key.startswith(prefix + ":")}
    names = _registry_names(prefix)
    assert names - covered == set(), f"registered {prefix} entries missing from alignkit.catalog.METHODS"
    assert covered - names == set(), f"catalogue names {prefix} entries that are not registered"


def test_cover_keys_name_known_registries_and_methods_are_unique():
    assert all(key.split(":", 1)[0] in COVERED for m in METHODS for key in m.covers)
    names = [m.name for m in METHODS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("method", [m for m in METHODS if m.run[0] in ("train", "iterate")], ids=lambda m: m.name)
def test_recipe_commands_load_and_build(method):
    from alignkit.algorithms import build_algorithm
    from alignkit.config import load_recipe

    recipe_path, overrides = method.run[1], list(method.run[2:])
    assert (ROOT / recipe_path).exists()
    recipe = load_recipe(ROOT / recipe_path, overrides)
    assert (recipe.iterate is not None) == (method.run[0] == "iterate")  # `alignkit train` refuses iterate recipes
    build_algorithm(recipe)  # unknown loss names and bad loss parameters are refused here


@pytest.mark.parametrize("method", [m for m in METHODS if m.run[0] == "generate"], ids=lambda m: m.name)
def test_decoding_commands_name_registered_strategies_with_valid_options(method):
    from alignkit.decoding.base import check_strategy, parse_options

    argv = list(method.run)
    strategy = argv[argv.index("--strategy") + 1]
    options = parse_options([argv[i + 1] for i, a in enumerate(argv) if a == "-O"])
    check_strategy(strategy, options)


def test_cli_lists_methods_as_json_and_by_family():
    from typer.testing import CliRunner

    from alignkit.cli import app

    result = CliRunner().invoke(app, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == len(METHODS) and {"name", "family", "paper", "run", "covers", "command"} <= set(rows[0])
    sppo = next(r for r in rows if r["name"].startswith("SPPO ("))
    assert sppo["command"] == "alignkit iterate recipes/sppo.yaml"
    only = CliRunner().invoke(app, ["methods", "--json", "--family", "online RL"])
    assert {r["family"] for r in json.loads(only.output)} == {"online RL"} and len(json.loads(only.output)) == len(methods("online RL"))
    bad = CliRunner().invoke(app, ["methods", "--family", "nope"])
    assert bad.exit_code == 2 and "unknown family 'nope'" in bad.output and families()[0] in bad.output

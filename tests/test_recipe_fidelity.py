"""docs/recipes.md is the fidelity table of every recipe: its pinned rows must be what the workbench does."""

import re
from pathlib import Path

import pytest
import yaml

from workbench import recipes
from workbench.experiment import load_experiment_config

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "recipes.md"


def _pinned_rows() -> dict[str, dict[str, str]]:
    """``{section: {setting: workbench cell}}`` for the rows whose setting is written as `code`."""
    sections, current = {}, None
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        # "## kdpl — ..." a recipe; "### kdpl with ... (`configs/kdpl_coop.yaml`)" a variant, pinned to its config file
        heading = re.match(r"## (\w+) — ", line) or re.match(r"### \w+ with .*\(`configs/(\w+)\.yaml`\)", line)
        if heading:
            current = sections.setdefault(heading.group(1), {})
            continue
        row = re.match(r"\| `([\w.]+)` \|(.*)\|\s*$", line)
        if row and current is not None:
            cells = [c.strip() for c in row.group(2).split("|")]
            current[row.group(1)] = cells[2]  # reference | source | workbench | note
    return sections


ROWS = _pinned_rows()


VARIANTS = ("kdpl_coop", "kdpl_maple")  # sections pinned to a config file of a recipe's other official variant


def test_the_table_has_a_section_for_every_recipe_and_ame():
    assert set(ROWS) == set(recipes.RECIPES) | {"AME"} | set(VARIANTS)


@pytest.mark.parametrize("variant, name", [(v, n) for v in VARIANTS for n in ROWS[v]])
def test_variant_rows_equal_what_its_config_file_runs(variant, name):
    config = load_experiment_config(ROOT / "configs" / f"{variant}.yaml")
    distill = config.distill.resolved()
    expected = yaml.safe_load(ROWS[variant][name])
    actual = getattr(distill.optim, name.split(".", 1)[1]) if name.startswith("optim.") else getattr(distill, name)
    assert actual == expected, f"{variant}.{name}: docs/recipes.md says {expected!r}, the config runs {actual!r}"


@pytest.mark.parametrize("recipe", recipes.RECIPES)
def test_every_recipe_default_is_in_the_table(recipe):
    missing = set(recipes.REGISTRY[recipe].defaults) - set(ROWS[recipe])
    assert not missing, f"docs/recipes.md lacks rows for {recipe}'s defaults {sorted(missing)}"


@pytest.mark.parametrize("recipe, name", [(r, n) for r in recipes.RECIPES for n in ROWS[r]])
def test_pinned_row_equals_the_workbench_default(recipe, name):
    config = load_experiment_config(ROOT / "configs" / f"{recipe}.yaml")
    assert config.distill.recipe == recipe
    expected = yaml.safe_load(ROWS[recipe][name])
    if name == "setting":
        actual = config.setting
    elif name.startswith("optim."):
        actual = getattr(config.distill.optim, name.split(".", 1)[1])
        # the recipe class holds the official optimiser; the config file adds nothing to it
        assert getattr(recipes.DistillConfig(recipe=recipe).optim, name.split(".", 1)[1]) == actual
    elif name in recipes.RECIPE_FIELDS:
        actual = recipes.REGISTRY[recipe].defaults[name]
        # The config file leaves the recipe's settings to the recipe (so the table is the one place of record).
        assert getattr(config.distill, name) == actual or recipe == "kdpl" and name == "kdpl_vocabulary"
    else:
        actual = getattr(config.distill, name)
    assert actual == expected, f"{recipe}.{name}: docs/recipes.md says {expected!r}, the workbench has {actual!r}"


@pytest.mark.parametrize("name", list(ROWS["AME"]))
def test_ame_rows_equal_the_distill_config_defaults(name):
    assert getattr(recipes.DistillConfig(), name) == yaml.safe_load(ROWS["AME"][name])


def test_dataset_specific_official_values():
    promptkd = recipes.DistillConfig(recipe="promptkd")
    assert {d: promptkd.resolved(d).kd_weight for d in ("dtd", "flowers102", "fgvc_aircraft", "caltech101")} == {
        "dtd": 200.0, "flowers102": 200.0, "fgvc_aircraft": 200.0, "caltech101": 1000.0}
    assert recipes.DistillConfig(recipe="promptkd", kd_weight=5.0).resolved("dtd").kd_weight == 5.0  # set wins
    assert recipes.DistillConfig(recipe="kdpl").resolved("embedded_world").kdpl_vocabulary == "embedded_generic"


def test_optim_settings_layer_over_the_recipes_own():
    from workbench.experiment import experiment_config
    from workbench.train import OptimConfig

    promptkd = recipes.DistillConfig.from_dict({"recipe": "promptkd", "optim": {"epochs": 2}}).optim
    assert (promptkd.epochs, promptkd.optimizer, promptkd.lr, promptkd.batch_size, promptkd.grad_clip) == (
        2, "sgd", 0.005, 8, 0.0)  # only the key given changed
    assert recipes.DistillConfig(recipe="kdpl").optim.warmup_fraction == 0.2  # Python construction, no file
    overridden = experiment_config(ROOT / "configs" / "dho.yaml", lr=0.01).distill.optim
    assert (overridden.lr, overridden.epochs, overridden.weight_decay) == (0.01, 200, 0.01)
    with pytest.raises(ValueError, match="recipe"):  # a recipe that is no name is refused, not layered
        recipes.DistillConfig.from_dict({"recipe": ["x"], "optim": {"epochs": 2}})
    for recipe in recipes.RECIPES:  # every official optimiser is a valid OptimConfig, different from the generic one
        assert recipes.DistillConfig(recipe=recipe).optim != OptimConfig()

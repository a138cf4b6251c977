"""One check of unknown keys for every settings file: experiment configs, world manifest, sweep specs, manifests."""

import pytest
import yaml

from workbench.config import ConfigError, check_names
from workbench.sweeps import ReportSettings, SpecError
from workbench.world import DEFAULT_MANIFEST, load_world_spec


def test_check_names_names_file_path_suggestion_and_valid_names():
    check_names({"lr": 1}, ["lr", "epochs"], "a.yaml")  # all known: nothing raised
    with pytest.raises(ConfigError, match=r"^a.yaml: unknown setting optim.ephocs \(did you mean optim.epochs\?\); "
                                          r"valid names: optim.lr, optim.epochs$"):
        check_names({"lr": 1, "ephocs": 2}, ["lr", "epochs"], "a.yaml", "optim.")
    with pytest.raises(KeyError, match=r"unknown fields x, y; valid names: a see docs"):
        check_names({"x": 1, "y": 2}, ["a"], "f", error=KeyError, what="field", hint="see docs")


def test_the_world_manifest_and_report_settings_use_it(tmp_path):
    doc = yaml.safe_load(DEFAULT_MANIFEST.read_text())
    doc["generator"]["image_sise"] = 32
    bad = tmp_path / "world.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"world.yaml: unknown field generator.image_sise \(did you mean "
                                         r"generator.image_size\?\)"):
        load_world_spec(bad)
    with pytest.raises(SpecError, match=r"spec.yaml: unknown field report.metric \(did you mean report.metrics\?\)"):
        ReportSettings.from_dict({"metric": ["hm"]}, "spec.yaml")

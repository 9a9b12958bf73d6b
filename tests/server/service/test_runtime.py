"""What ``load_runtime`` refuses before serving: interpretations that name features the SAE
does not have; the settings it passes on to the model."""

from __future__ import annotations

from dataclasses import replace

import pytest

from maira_sae.server.service.config import SaeSpec
from maira_sae.server.service.metrics import Metrics
from maira_sae.server.service.runtime import StartupError, load_runtime
from tests.support.servers import demo_config


def test_interpretations_beyond_the_sae_are_refused_naming_the_file(demo_checkpoint, tmp_path):
    table = tmp_path / "interpretations.csv"
    table.write_text('feature,explanation,score\n3,"a label",0.5\n100000,"too far",0.5\n')
    spec = SaeSpec(id="demo", path=demo_checkpoint.sae_dir, interpretations_path=table)
    config = demo_config(demo_checkpoint, saes=(spec,))
    with pytest.raises(StartupError, match=r"interpretations\.csv: features \[100000\] are out"):
        load_runtime(config, Metrics())


def test_the_image_features_setting_reaches_the_model_and_getinfo(demo_checkpoint):
    base = demo_config(demo_checkpoint)
    config = replace(base, model=replace(base.model, image_features="hidden_states"))
    runtime = load_runtime(config, Metrics())
    assert runtime.engine.model.config.image_features == "hidden_states"
    assert runtime.model.image_features == "hidden_states"

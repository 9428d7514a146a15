"""Fixtures of the continual tests (``tiny_model_dir`` is in tests/conftest.py)."""

from __future__ import annotations

import pytest
import yaml

from ..helpers.runs import raw_config


@pytest.fixture
def base_config(tmp_path, tiny_model_dir):
    """The tiny two-task run config, with a validation split, as a YAML file."""
    raw = raw_config(tiny_model_dir, validation_fraction=0.25)
    raw["tasks"][1].pop("training")  # one learning rate for the whole queue
    path = tmp_path / "configs" / "base.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(raw))
    return path

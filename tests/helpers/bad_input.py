"""A bad edit of the working run config, and the check that ``classp-hf run`` refuses it in one line."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from classp_hf.cli import main as cli_main

from .runs import raw_config


@dataclass(frozen=True)
class Case:
    """A bad edit of the working config and the line it must give (a regex matching the start of the message)."""

    change: Callable[[dict, Path], None]
    message: str


def training(**values):
    return lambda raw, tmp: raw["training"].update(values)


def task(index, **values):
    return lambda raw, tmp: raw["tasks"][index].update(values)


def top(**values):
    return lambda raw, tmp: raw.update(values)


def peft(**values):
    return lambda raw, tmp: raw.update(peft={"r": 4, "target_modules": ["query", "value"], **values})


def run_bad(tmp_path, model_dir, case: Case, capsys) -> tuple[int, list[str], Path]:
    raw = raw_config(model_dir)
    for item in raw["tasks"]:
        item.update(max_train_samples=8, max_eval_samples=8)
    case.change(raw, tmp_path)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    output = tmp_path / "out"
    code = cli_main(["run", str(config_path), "--output-dir", str(output), "--quiet"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines, output


def assert_refused(tmp_path, model_dir, case, capsys):
    code, lines, output = run_bad(tmp_path, model_dir, case, capsys)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("classp-hf: error: ")
    assert re.match(case.message, lines[0].removeprefix("classp-hf: error: ")), lines[0]
    assert not output.exists()

"""The README's headline table from a finished comparison: one row per setting, the references below.

    python recipes/headline_table.py runs/experiments/fpb_imdb
    python recipes/headline_table.py runs/experiments/fpb_imdb --settings classp,adamw,ewc,replay,classp+replay

Reads ``comparison.json`` (``classp-hf compare`` writes it; ``--report-only --reference NAME`` rebuilds it with another
reference) and prints a Markdown table: each setting's chosen point, ACC, the first task's accuracy after the last
task, forgetting (mean ± sample std over seeds), the extra memory the optimizer and the method keep, the paired ACC
difference to the comparison's reference with its 95% interval (*within noise* when it holds 0) and the
"did not learn" marks; then the ``joint`` and ``single_task`` reference rows. Every number is the comparison's own:
nothing is recomputed but the rounding.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from classp_hf.continual.compare.report import format_difference, format_mean_std

MIB = 2**20


def _chosen(setting: Mapping[str, Any]) -> str:
    """The chosen grid point's label, or the empty string for a setting without a grid."""
    chosen = setting.get("chosen")
    if not chosen or chosen == "default":
        return ""
    for point in setting.get("points", []):
        if point.get("name") == chosen:
            return f" ({point.get('label', chosen)})"
    return f" ({chosen})"


def _versus(setting: Mapping[str, Any]) -> str:
    """The paired ACC difference to the reference in points, its interval and the *within noise* mark."""
    text = format_difference(setting)
    return f"{text}, *within noise*" if (setting.get("versus_reference") or {}).get("within_noise") else text


def headline_rows(data: Mapping[str, Any], settings: Sequence[str] | None = None) -> list[list[str]]:
    """The table's rows: the competing settings (in ``settings``' order, or the comparison's), then the references.

    Args:
        data: a ``comparison.json``'s content.
        settings: names to show, in order (default: every setting).

    Returns:
        One list of cells per row.

    Raises:
        SystemExit: a name in ``settings`` that the comparison does not hold.
    """
    by_name = {setting["name"]: setting for setting in data["settings"]}
    unknown = [name for name in settings or [] if name not in by_name]
    if unknown:
        raise SystemExit(f"--settings: {', '.join(unknown)} not in the comparison (it holds {', '.join(by_name)})")
    names = list(settings) if settings else list(by_name)
    references = [name for name in by_name if by_name[name].get("mode") in ("joint", "single_task")]
    rows = []
    for name in [n for n in names if n not in references] + [n for n in references if n in names or not settings]:
        setting = by_name[name]
        summary = setting.get("summary") or {}
        memory = (summary.get("extra_memory_bytes") or {}).get("mean")
        is_reference = name in references
        notes = [f"did not learn {task}" for task in setting.get("did_not_learn") or []]
        rows.append(
            [
                f"{'reference: ' if is_reference else ''}{name}{_chosen(setting)}",
                format_mean_std(summary.get("acc")),
                format_mean_std(summary.get("first_task_final")),
                format_mean_std(summary.get("forgetting")) if not is_reference else "n/a",
                "n/a" if memory is None else f"{memory / MIB:.0f}",
                _versus(setting),  # a reference's too: how far the compared setting is from it
                "; ".join(notes),
            ]
        )
    return rows


def headline_table(data: Mapping[str, Any], settings: Sequence[str] | None = None) -> str:
    """The Markdown table of :func:`headline_rows`, with its header."""
    first = data["tasks"][0]
    reference = (data.get("noise") or {}).get("reference") or "reference"
    header = [
        "setting (chosen point)",
        "ACC %",
        f"{first} after the last task %",
        "forgetting (pts)",
        "extra memory (MiB)",
        f"ACC − {reference} (pts) [95% CI]",
        "notes",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in headline_rows(data, settings)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", type=Path, help="a comparison folder (holding comparison.json)")
    parser.add_argument("--settings", help="comma-separated setting names, in the order to show (default: all)")
    args = parser.parse_args(argv)
    path = args.comparison / "comparison.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (run `classp-hf compare` into {args.comparison} first)")
    data = json.loads(path.read_text(encoding="utf-8"))
    settings = [name.strip() for name in args.settings.split(",") if name.strip()] if args.settings else None
    print(headline_table(data, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

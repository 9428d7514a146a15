"""Ownership and locking of output folders: --overwrite removes only what a run or comparison wrote, a folder
that is not ours is refused, and two writers on one folder never both proceed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

import classp_hf.continual as continual
from classp_hf.cli import main as cli_main
from classp_hf.continual.compare import compare
from classp_hf.continual.compare.launch import InProcessLauncher
from classp_hf.continual.config import config_from_dict
from classp_hf.continual.outputs import clear_run_outputs, prepare_output_dir
from classp_hf.continual.ownership import (
    LOCK_FILENAME,
    MARKER_FILENAME,
    FolderBusyError,
    FolderLock,
    Owner,
    legacy_entries,
)
from classp_hf.continual.runner import _broadcast_from_main

from ..helpers.compare import FakeLauncher, write_grid
from ..helpers.ownership import LockHolder
from ..helpers.runs import raw_config

FIRST, SECOND = "financial_phrasebank", "amazon_reviews"

#: A user's files under every name a run writes (and beside them).
USER_FILES = {
    "model/my_weights.bin": "w",
    "logs/important.log": "l",
    f"logs/{FIRST}/mine.log": "l1",
    "adapters/x/a.bin": "a",
    f"adapters/{FIRST}/mine.txt": "a1",
    "merged/m.txt": "m",
    f"merged/{FIRST}/mine.txt": "m1",
    "checkpoints/mine/c.txt": "c",
    "trainer/t.txt": "t",
    f"trainer/{FIRST}/t.txt": "t1",
    "notes.txt": "n",
}


def place(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def assert_kept(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        assert (folder / name).is_file() and (folder / name).read_text() == text, name


@pytest.fixture
def holder():
    holders = []

    def hold(folder: Path) -> LockHolder:
        holders.append(LockHolder(folder))
        return holders[-1]

    yield hold
    for h in holders:
        if h.process.poll() is None:
            h.kill()


# -- the lock ---------------------------------------------------------------------------------------


def test_a_held_lock_refuses_a_second_writer_naming_the_pid_and_a_dead_holders_lock_is_taken_over(tmp_path, holder):
    folder = tmp_path / "out"
    held = holder(folder)
    with pytest.raises(FolderBusyError, match=rf"--output-dir {folder} is in use by .* \(pid {held.pid}\)"):
        FolderLock(folder).acquire()
    held.kill()  # killed with the lock held: the kernel lets it go, the stale file stays
    assert (folder / LOCK_FILENAME).read_text().strip() == str(held.pid)
    lock = FolderLock(folder).acquire()
    assert (folder / LOCK_FILENAME).read_text().strip() == str(os.getpid())
    with pytest.raises(FolderBusyError, match=rf"pid {os.getpid()}"):  # a second lock in this process too
        FolderLock(folder).acquire()
    lock.release()
    assert list(folder.iterdir()) == []  # the lock file goes with the lock
    fresh = FolderLock(tmp_path / "new" / "out").acquire()
    fresh.release()
    assert not (tmp_path / "new").exists()  # a writer that wrote nothing leaves no folder it made


def test_second_run_and_compare_on_a_live_folder_exit_2_in_one_line(tmp_path, tiny_model_dir, holder, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw_config(tiny_model_dir)))
    folder = tmp_path / "out"
    held = holder(folder)
    for extra in ([], ["--overwrite"]):
        assert cli_main(["run", str(config), "--output-dir", str(folder), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is in use by another classp-hf process (pid {held.pid})" in err[0], err
    with pytest.raises(FolderBusyError, match=f"pid {held.pid}"):  # the Python API
        continual.run(config, folder, log=False)
    args = ["compare", "validation_fraction=0.2", "--config", str(config), "--presets", "adamw", "--seeds", "0"]
    args += ["--output-dir", str(folder)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"(pid {held.pid})" in err[0], err
    assert [p.name for p in folder.iterdir()] == [LOCK_FILENAME]  # nothing written by the refused writers


def test_a_second_compare_is_refused_at_once_and_compare_runs_lock_their_folders(tmp_path, base_config, holder):
    grid = write_grid(tmp_path, [{"name": "plain"}])
    output = tmp_path / "cmp"
    held = holder(output)
    launcher = FakeLauncher(lambda job: (0.5, 0.5))
    with pytest.raises(FolderBusyError, match=f"pid {held.pid}"):
        compare(grid, output, launcher=launcher, log=False)
    assert launcher.launched == []  # refused before any run
    held.kill()
    compare(grid, output, launcher=FakeLauncher(lambda job: "boom"), log=False)  # the stale lock is taken over
    run_dir = output / "runs" / "plain" / "default" / "seed0"
    busy = holder(run_dir)  # a run of the comparison is live elsewhere (another compare's, say)
    comparison = compare(grid, output, launcher=InProcessLauncher(), log=False)
    record = comparison.setting("plain").runs[0]
    assert record.status == "failed" and f"is in use by another classp-hf process (pid {busy.pid})" in record.error
    assert [p.name for p in run_dir.iterdir()] == [LOCK_FILENAME]  # the refused run wrote nothing


def _broadcast_worker(rank: int, init_file: str, results: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    message = "--output-dir D is in use by another classp-hf process (pid 7)" if rank == 0 else None
    Path(results, f"{rank}.txt").write_text(str(_broadcast_from_main(message, 2)))
    torch.distributed.destroy_process_group()


def test_only_the_main_process_locks_and_every_rank_gets_its_verdict(tmp_path):
    args = (str(tmp_path / "init"), str(tmp_path))
    torch.multiprocessing.start_processes(_broadcast_worker, args=args, nprocs=2, start_method="fork")
    verdicts = {(tmp_path / f"{rank}.txt").read_text() for rank in (0, 1)}
    assert verdicts == {"--output-dir D is in use by another classp-hf process (pid 7)"}  # rank 1 stops too


# -- ownership --------------------------------------------------------------------------------------


def test_a_folder_without_a_marker_is_refused_without_suggesting_overwrite(tmp_path, tiny_model_dir, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw_config(tiny_model_dir)))
    folder = tmp_path / "out"
    files = {**USER_FILES, "results.json": "precious", "report.md": "mine"}
    place(folder, files)
    for extra in ([], ["--overwrite"]):
        assert cli_main(["run", str(config), "--output-dir", str(folder), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds no classp-hf run" in err[0] and "choose another folder" in err[0], err
        assert "--overwrite" not in err[0]
    assert_kept(folder, files)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(files)


def lora_config(model_dir: str) -> dict:
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["query", "value"]}
    return raw_config(model_dir, peft={**lora, "adapters": "per_task", "merge": True})


def written_by_run(folder: Path) -> set[str]:
    return set(json.loads((folder / MARKER_FILENAME).read_text())["written"])


def test_overwrite_keeps_user_files_under_every_output_name_and_in_folders_of_earlier_versions(
    tmp_path,
    tiny_model_dir,
):
    raw = lora_config(tiny_model_dir)
    folder = tmp_path / "out"
    continual.run(raw, folder, log=False)
    first = json.loads((folder / MARKER_FILENAME).read_text())
    assert first["kind"] == "run" and first["tool"] == "classp-hf"
    checkpoint = json.loads((folder / "run_state.json").read_text())["checkpoint"]
    files = {**USER_FILES, f"{checkpoint}/mine.txt": "k"}
    place(folder, files)
    assert not set(files) & written_by_run(folder)

    results = continual.run(raw, folder, overwrite=True, log=False)  # marked folder
    assert results.to_dict()["status"] == "complete"
    assert_kept(folder, files)
    assert json.loads((folder / MARKER_FILENAME).read_text())["run_id"] != first["run_id"]
    assert not set(files) & written_by_run(folder)
    for name in ("model", f"adapters/{SECOND}", f"merged/{SECOND}"):  # the run's own folders were saved again
        assert (folder / name / "config.json").is_file() or (folder / name / "adapter_config.json").is_file(), name

    (folder / MARKER_FILENAME).unlink()  # a run folder of an earlier classp_hf: run_state.json, no marker
    legacy = set(legacy_entries(folder))
    assert "run_state.json" in legacy and "model/model.safetensors" in legacy and not set(files) & legacy
    assert prepare_output_dir(folder, overwrite=True) == folder  # recognised as a run's folder
    clear_run_outputs(folder)
    assert_kept(folder, files)
    left = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert left == set(files)  # everything the earlier version wrote is gone, the user's files are not


def test_owner_clear_removes_only_the_manifest_and_empty_folders(tmp_path):
    folder = tmp_path / "out"
    owner = Owner.create(folder, "run")
    owner.record(folder / "model" / "config.json", folder / "logs" / "task")
    place(folder, {"model/config.json": "{}", "model/mine.bin": "x"})
    (folder / "logs" / "task").mkdir(parents=True)
    assert owner.clear() == ["logs/task", "model/config.json", "logs"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        MARKER_FILENAME,
        "model",
        "model/mine.bin",
    ]


def test_compare_overwrite_keeps_user_files_in_runs_logs_figures_and_configs(tmp_path, base_config):
    grid = write_grid(tmp_path, [{"name": "plain"}])
    output = tmp_path / "cmp"
    launcher = FakeLauncher(lambda job: (0.5, 0.5))
    compare(grid, output, launcher=launcher, log=False)
    assert json.loads((output / MARKER_FILENAME).read_text())["kind"] == "compare"
    files = {
        "runs/mine.txt": "r",
        "runs/plain/mine.txt": "r1",
        "runs/plain/default/seed0/model/mine.bin": "r2",
        "runs/plain/default/seed0/notes.txt": "r3",
        "logs/mine.log": "l",
        "logs/plain/default/mine.log": "l1",
        "figures/mine.png": "f",
        "configs/mine.yaml": "c",
        "notes.txt": "n",
    }
    place(output, files)
    comparison = compare(grid, output, launcher=launcher, overwrite=True, log=False)
    assert launcher.launched[-1][-1] == "overwrite" and comparison.setting("plain").runs[0].status == "complete"
    assert_kept(output, files)
    (output / MARKER_FILENAME).unlink()  # a comparison of an earlier classp_hf: compare_plan.json, no marker
    compare(grid, output, launcher=launcher, overwrite=True, log=False)
    assert_kept(output, files)
    assert len(launcher.launched) == 3


def test_a_run_folder_is_not_a_comparison_and_the_other_way_round(tmp_path, base_config, tiny_model_dir, capsys):
    grid = write_grid(tmp_path, [{"name": "plain"}])
    run_folder = tmp_path / "run"
    Owner.create(run_folder, "run")
    with pytest.raises(ValueError, match="holds no comparison"):
        compare(grid, run_folder, launcher=FakeLauncher(lambda job: (0.5, 0.5)), overwrite=True, log=False)
    comparison_folder = tmp_path / "cmp"
    Owner.create(comparison_folder, "compare")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw_config(tiny_model_dir)))
    assert cli_main(["run", str(config), "--output-dir", str(comparison_folder), "--overwrite"]) == 2
    assert "holds a comparison, not a run; choose another folder" in capsys.readouterr().err


def test_bad_input_with_overwrite_writes_nothing_into_a_marked_folder(tmp_path, tiny_model_dir, capsys):
    raw = raw_config(tiny_model_dir)
    raw["tasks"][0]["text_column"] = "body"
    folder = tmp_path / "out"
    Owner.create(folder, "run")
    (folder / "keep.txt").write_text("keep")
    with pytest.raises(ValueError, match="column 'body'"):
        continual.run(config_from_dict(raw), folder, overwrite=True, log=False)
    assert sorted(p.name for p in folder.iterdir()) == [MARKER_FILENAME, "keep.txt"]


def test_a_corrupt_marker_is_one_line(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / MARKER_FILENAME).write_text("{")
    with pytest.raises(ValueError, match=r"owner\.json is corrupt \(JSONDecodeError\); remove the folder yourself"):
        prepare_output_dir(folder, overwrite=True)


def test_a_crafted_manifest_removes_nothing_outside_the_folder(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("keep")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model").symlink_to(elsewhere)
    marker = {"tool": "classp-hf", "kind": "run", "written": ["../precious.txt", str(outside), "model/config.json"]}
    (folder / MARKER_FILENAME).write_text(json.dumps(marker))
    clear_run_outputs(folder)
    assert outside.read_text() == "keep" and (elsewhere / "config.json").read_text() == "keep"

"""Task data: labels harmonised by name, clear errors for bad data, seeded sampling."""

from __future__ import annotations

import csv

import pytest

from classp_hf.continual.config import ConfigError, TaskConfig
from classp_hf.continual.tasks import label_mapping, load_task

LABELS = ["negative", "neutral", "positive"]


def write_csv(path, rows, header=("text", "label")):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def binary_task(tmp_path, rows=None, **options):
    rows = rows or [("great film", "positive"), ("awful film", "negative"), ("loved it", "positive")]
    files = {"train": write_csv(tmp_path / "train.csv", rows), "test": write_csv(tmp_path / "test.csv", rows)}
    return TaskConfig(name="imdb", data_files=files, **options)


def test_binary_positive_lands_on_shared_positive_not_on_neutral(tmp_path, tokenizer):
    # The paper's reference code mapped IMDB's positive onto index 1, FPB's neutral.
    task = binary_task(tmp_path, label_map={"negative": "negative", "positive": "positive"})
    data = load_task(task, LABELS, tokenizer, max_length=16, seed=0)
    assert data.test_labels == [2, 0, 2]
    assert LABELS.index("neutral") not in data.test_labels


def test_without_label_map_labels_match_by_name(tmp_path, tokenizer):
    data = load_task(binary_task(tmp_path), LABELS, tokenizer, max_length=16, seed=0)
    assert data.test_labels == [2, 0, 2]


def test_label_map_renames(tmp_path, tokenizer):
    rows = [("good", "pos"), ("bad", "neg")]
    task = binary_task(tmp_path, rows=rows, label_map={"pos": "positive", "neg": "negative"})
    assert load_task(task, LABELS, tokenizer, max_length=16, seed=0).test_labels == [2, 0]


def test_unmapped_label_is_an_error(tmp_path, tokenizer):
    rows = [("good", "pos"), ("meh", "mixed")]
    task = binary_task(tmp_path, rows=rows, label_map={"pos": "positive"})
    with pytest.raises(ConfigError, match=r"label_map: dataset label 'mixed' has no mapping"):
        load_task(task, LABELS, tokenizer, max_length=16, seed=0)
    with pytest.raises(ConfigError, match=r"dataset label 'pos' is not a shared label"):
        label_mapping(TaskConfig(name="t"), ["pos"], LABELS)


def test_missing_column_missing_file_and_empty_split(tmp_path, tokenizer):
    task = binary_task(tmp_path, text_column="review")
    with pytest.raises(
        ConfigError, match=r"text_column: column 'review' not in the train split \(columns: text, label\)"
    ):
        load_task(task, LABELS, tokenizer, max_length=16, seed=0)
    missing = TaskConfig(name="gone", data_files={"train": str(tmp_path / "no.csv"), "test": str(tmp_path / "no.csv")})
    with pytest.raises(ConfigError, match=r"data_files\.train: file not found"):
        load_task(missing, LABELS, tokenizer, max_length=16, seed=0)
    empty = tmp_path / "empty"
    files = {"train": write_csv(empty / "train.csv", []), "test": write_csv(empty / "test.csv", [("a", "positive")])}
    with pytest.raises(ConfigError, match=r"the train split is empty"):
        load_task(TaskConfig(name="e", data_files=files), LABELS, tokenizer, max_length=16, seed=0)


def test_sampling_is_seeded_and_truncation_applies(tmp_path, tokenizer):
    rows = [(f"review number {i} " + "word " * 50, "positive" if i % 2 else "negative") for i in range(40)]
    task = binary_task(tmp_path, rows=rows, max_train_samples=10, max_eval_samples=5)
    first = load_task(task, LABELS, tokenizer, max_length=12, seed=0)
    again = load_task(task, LABELS, tokenizer, max_length=12, seed=0)
    other = load_task(task, LABELS, tokenizer, max_length=12, seed=1)
    assert len(first.train) == 10 and len(first.test) == 5
    assert first.train["input_ids"] == again.train["input_ids"]
    assert first.train["input_ids"] != other.train["input_ids"]
    assert max(len(ids) for ids in first.train["input_ids"]) == 12


def test_real_shared_data_loads(shared_data, tokenizer):
    task = TaskConfig(
        name="amazon_reviews",
        data_files={s: str(shared_data / "amazon_reviews" / f"{s}.csv") for s in ("train", "test")},
        label_map={"negative": "negative", "positive": "positive"},
        max_eval_samples=50,
    )
    data = load_task(task, LABELS, tokenizer, max_length=32, seed=0)
    assert len(data.test) == 50 and set(data.test_labels) == {0, 2}

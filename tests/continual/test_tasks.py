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


def test_class_indices_as_labels_get_the_label_map_that_reads_them_in_order(tmp_path, tokenizer):
    task = binary_task(tmp_path, rows=[("good", "2"), ("meh", "1"), ("bad", "0")])
    with pytest.raises(ConfigError) as error:
        load_task(task, LABELS, tokenizer, max_length=16, seed=0)
    hint = "(if 0, 1, 2 mean negative, neutral, positive: label_map: {0: negative, 1: neutral, 2: positive})"
    assert str(error.value).endswith("add a label_map " + hint)
    # the suggested map loads the task (the config turns YAML's integer keys into these strings)
    task = binary_task(
        tmp_path,
        rows=[("good", "2"), ("meh", "1"), ("bad", "0")],
        label_map={"0": "negative", "1": "neutral", "2": "positive"},
    )
    assert load_task(task, LABELS, tokenizer, max_length=16, seed=0).test_labels == [2, 1, 0]
    # no hint where the indices do not cover the shared labels one to one (0/1 under a 3-way head)
    with pytest.raises(ConfigError) as error:
        label_mapping(TaskConfig(name="t"), ["0", "1"], LABELS)
    assert str(error.value).endswith("add a label_map")


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


def test_train_and_test_files_with_different_columns_name_both_files(tmp_path, tokenizer):
    files = {
        "train": write_csv(tmp_path / "train.csv", [("good", "positive")], header=("text", "label")),
        "test": write_csv(tmp_path / "test.csv", [("bad", "negative")], header=("review", "label")),
    }
    with pytest.raises(ConfigError) as error:
        load_task(TaskConfig(name="t", data_files=files), LABELS, tokenizer, max_length=16, seed=0)
    message = str(error.value)
    assert message.startswith("tasks (t).text_column: column 'text' is in the train file but not in the test file")
    assert files["train"] in message and files["test"] in message
    assert "has columns text, label" in message and "has review, label" in message and "\n" not in message


def test_extra_columns_in_one_file_and_different_label_types_are_fine(tmp_path, tokenizer):
    files = {
        "train": write_csv(tmp_path / "train.csv", [("good", 1, "x"), ("bad", 0, "y")], header=("text", "label", "id")),
        "test": write_csv(tmp_path / "test.csv", [("fine", "1"), ("awful", "zero")], header=("text", "label")),
    }
    task = TaskConfig(name="t", data_files=files, label_map={"1": "positive", "0": "negative", "zero": "negative"})
    data = load_task(task, LABELS, tokenizer, max_length=16, seed=0)
    assert list(data.train["labels"]) == [2, 0] and data.test_labels == [2, 0]


def test_csv_text_and_labels_like_na_stay_text(tmp_path, tokenizer):
    texts = ["NA", "null", "nan", "None", "N/A", "", "#N/A", "NULL"]
    rows = [(text, "NA" if i % 2 else "positive") for i, text in enumerate(texts)]
    files = {"train": write_csv(tmp_path / "train.csv", rows), "test": write_csv(tmp_path / "test.csv", rows)}
    task = TaskConfig(name="t", data_files=files, label_map={"NA": "neutral", "positive": "positive"})
    data = load_task(task, LABELS, tokenizer, max_length=16, seed=0)
    assert list(data.train["input_ids"]) == tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    assert data.test_labels == [2, 1] * 4
    unmapped = TaskConfig(name="t", data_files=files)
    with pytest.raises(ConfigError, match=r"dataset label 'NA' is not a shared label"):  # not 'nan'
        load_task(unmapped, LABELS, tokenizer, max_length=16, seed=0)


def test_tsv_and_json_files(tmp_path, tokenizer):
    import json

    tsv = tmp_path / "train.tsv"
    tsv.write_text("text\tlabel\nNA\tpositive\ngreat, really\tpositive\n", encoding="utf-8")
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in [{"text": "bad", "label": "negative"}]) + "\n")
    both_tsv = TaskConfig(name="t", data_files={"train": str(tsv), "test": str(tsv)})
    data = load_task(both_tsv, LABELS, tokenizer, max_length=16, seed=0)
    assert list(data.train["input_ids"]) == tokenizer(["NA", "great, really"], max_length=16)["input_ids"]
    mixed = TaskConfig(name="t", data_files={"train": str(tsv), "test": str(jsonl)})
    with pytest.raises(ConfigError, match=r"^tasks \(t\)\.data_files: train and test are of different types"):
        load_task(mixed, LABELS, tokenizer, max_length=16, seed=0)
    json_task = TaskConfig(name="t", data_files={"train": str(jsonl), "test": str(jsonl)})
    assert load_task(json_task, LABELS, tokenizer, max_length=16, seed=0).test_labels == [0]


def test_malformed_file_is_named(tmp_path, tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "positive"}\n{not json\n')
    task = TaskConfig(name="t", data_files={"train": str(bad), "test": str(bad)})
    with pytest.raises(ConfigError, match=r"^tasks \(t\)\.data_files\.train: cannot read .*bad\.jsonl: "):
        load_task(task, LABELS, tokenizer, max_length=16, seed=0)


def test_a_hub_dataset_that_is_not_cached_names_the_offline_hub(tokenizer, monkeypatch):
    import datasets

    task = TaskConfig(name="reviews", dataset="no-such-org/no-such-dataset-classp-hf")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as error:
        load_task(task, LABELS, tokenizer, max_length=16, seed=0)
    message = str(error.value)
    assert message.startswith("tasks (reviews).dataset: cannot load 'no-such-org/no-such-dataset-classp-hf': ")
    assert message.endswith(
        "(the Hub is off here, HF_HUB_OFFLINE: load the dataset once with the Hub reachable, or give data_files)"
    )
    assert "\n" not in message

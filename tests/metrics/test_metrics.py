"""Tests for `classp_hf.metrics`: continual-learning metrics and the local `evaluate` modules."""

from __future__ import annotations

import math
import re
import socket
import warnings

import numpy as np
import pytest

from classp_hf.metrics import (
    KNOWN_METRICS,
    average_accuracy,
    backward_transfer,
    continual_metrics,
    forgetting,
    forward_transfer,
    load_metric,
    majority_class_accuracy,
    metric_dir,
)

# ---------------------------------------------------------------------------------------------------------------------
# Continual-learning metrics
# ---------------------------------------------------------------------------------------------------------------------

# R[i][j] = accuracy on task j after training on task i.
R3 = [
    [0.90, 0.85, 0.20],
    [0.70, 0.80, 0.30],
    [0.60, 0.50, 0.90],
]
B3 = [0.50, 0.20, 0.25]
# Hand computation (T = 3):
#   ACC        = (0.60 + 0.50 + 0.90) / 3                                     = 2.0 / 3 = 0.666...
#   BWT        = ((R[2][0] - R[0][0]) + (R[2][1] - R[1][1])) / 2
#              = ((0.60 - 0.90) + (0.50 - 0.80)) / 2 = (-0.30 - 0.30) / 2     = -0.30
#   FWT        = ((R[0][1] - b[1]) + (R[1][2] - b[2])) / 2
#              = ((0.85 - 0.20) + (0.30 - 0.25)) / 2 = (0.65 + 0.05) / 2      = 0.35
#   forgetting = (max(R[0][0], R[1][0]) - R[2][0] + max(R[0][1], R[1][1]) - R[2][1]) / 2
#              = ((0.90 - 0.60) + (0.85 - 0.50)) / 2 = (0.30 + 0.35) / 2      = 0.325
#   (R[0][1] = 0.85 was recorded before task 1 was trained; the max over rows 0..T-2 includes it. A max restricted
#   to rows i >= j would give (0.30 + 0.30) / 2 = 0.30 instead.)
EXPECTED3 = {"acc": 2.0 / 3.0, "bwt": -0.30, "fwt": 0.35, "forgetting": 0.325}


def test_hand_computed_3x3():
    assert average_accuracy(R3) == pytest.approx(EXPECTED3["acc"])
    assert backward_transfer(R3) == pytest.approx(EXPECTED3["bwt"])
    assert forward_transfer(R3, B3) == pytest.approx(EXPECTED3["fwt"])
    assert forgetting(R3) == pytest.approx(EXPECTED3["forgetting"])


def test_continual_metrics_dict_plain_floats():
    out = continual_metrics(R3, B3)
    assert set(out) == {"acc", "bwt", "fwt", "forgetting"}
    for key, value in out.items():
        assert type(value) is float, key
        assert value == pytest.approx(EXPECTED3[key])


def test_numpy_input_matches_lists():
    assert continual_metrics(np.array(R3), np.array(B3)) == pytest.approx(continual_metrics(R3, B3))
    assert continual_metrics(np.array(R3, dtype=np.float32), B3)["bwt"] == pytest.approx(EXPECTED3["bwt"])


def test_hand_computed_2x2():
    # ACC = (0.4 + 0.9) / 2 = 0.65; BWT = 0.4 - 0.8 = -0.4; FWT = 0.3 - 0.5 = -0.2; forgetting = 0.8 - 0.4 = 0.4
    R = [[0.8, 0.3], [0.4, 0.9]]
    out = continual_metrics(R, [0.1, 0.5])
    assert out == pytest.approx({"acc": 0.65, "bwt": -0.4, "fwt": -0.2, "forgetting": 0.4})


def test_no_forgetting_and_positive_backward_transfer():
    # Accuracy on old tasks only improves: forgetting = mean(max(0.5) - 0.7) = -0.2, BWT = 0.7 - 0.5 = 0.2.
    R = [[0.5, 0.0], [0.7, 0.6]]
    assert backward_transfer(R) == pytest.approx(0.2)
    assert forgetting(R) == pytest.approx(-0.2)


def _reference_loops(R, b):
    """Straightforward loop implementation of the definitions, for comparison."""
    T = len(R)
    acc = sum(R[T - 1][j] for j in range(T)) / T
    bwt = sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)
    fwt = sum(R[j - 1][j] - b[j] for j in range(1, T)) / (T - 1)
    fgt = sum(max(R[i][j] for i in range(T - 1)) - R[T - 1][j] for j in range(T - 1)) / (T - 1)
    return {"acc": acc, "bwt": bwt, "fwt": fwt, "forgetting": fgt}


@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_matches_loop_definitions(T):
    rng = np.random.default_rng(T)
    R = rng.uniform(size=(T, T)).tolist()
    b = rng.uniform(size=T).tolist()
    assert continual_metrics(R, b) == pytest.approx(_reference_loops(R, b))


def test_single_task_gives_none_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. numpy's "Mean of empty slice" RuntimeWarning
        out = continual_metrics([[0.7]], [0.5])
    assert out == {"acc": 0.7, "bwt": None, "fwt": None, "forgetting": None}
    assert backward_transfer([[0.7]]) is None
    assert forward_transfer([[0.7]], [0.5]) is None
    assert forgetting(np.array([[0.7]])) is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in out.values())


def test_fwt_none_without_baseline():
    out = continual_metrics(R3)
    assert out["fwt"] is None
    assert out["acc"] == pytest.approx(EXPECTED3["acc"])


@pytest.mark.parametrize(
    "bad",
    [
        [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]],  # 2 x 3
        [[0.1, 0.2], [0.3]],  # ragged
        [0.1, 0.2],  # 1-D
        [],  # empty
        [[]],  # 1 x 0
        [[0.1, float("nan")], [0.3, 0.4]],  # NaN
    ],
)
@pytest.mark.parametrize("fn", [average_accuracy, backward_transfer, forgetting, continual_metrics])
def test_invalid_matrix_raises(fn, bad):
    with pytest.raises(ValueError):
        fn(bad)


def test_non_square_error_message():
    with pytest.raises(ValueError, match="square"):
        average_accuracy(np.zeros((2, 3)))


@pytest.mark.parametrize("b", [[0.1, 0.2], [0.1, 0.2, 0.3, 0.4], [0.1, float("nan"), 0.3]])
def test_baseline_wrong_length_raises(b):
    with pytest.raises(ValueError):
        forward_transfer(R3, b)
    with pytest.raises(ValueError):
        continual_metrics(R3, b)


def test_majority_class_accuracy():
    assert majority_class_accuracy([0, 1, 1, 2]) == pytest.approx(0.5)
    assert majority_class_accuracy([3, 3, 3]) == 1.0
    assert majority_class_accuracy(np.array([1, 0, 0, 0, 2])) == pytest.approx(0.6)
    assert majority_class_accuracy(iter(["pos", "neg", "neg"])) == pytest.approx(2 / 3)
    assert type(majority_class_accuracy([0, 1])) is float


@pytest.mark.parametrize("empty", [[], np.array([], dtype=np.int64), iter(())])
def test_majority_class_accuracy_empty_raises(empty):
    with pytest.raises(ValueError):
        majority_class_accuracy(empty)


# ---------------------------------------------------------------------------------------------------------------------
# Local evaluate modules
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """Offline env vars plus a socket guard: any attempt to open a network connection fails the test."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")

    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


def test_metric_dir_layout():
    assert set(KNOWN_METRICS) == {"accuracy", "macro_f1"}
    for name in KNOWN_METRICS:
        path = metric_dir(name)
        assert path.is_absolute() and path.is_dir()
        # evaluate's local loader expects <dir>/<dir name>.py
        assert (path / f"{name}.py").is_file()
        assert sorted(p.name for p in path.glob("*.py")) == [f"{name}.py"]


@pytest.mark.parametrize("name", ["accuracy", "macro_f1"])
def test_metric_script_one_import_per_line(name):
    # evaluate's get_imports() parses each line with a regex and misreads "import a, b".
    source = (metric_dir(name) / f"{name}.py").read_text(encoding="utf-8")
    assert not re.search(r"^\s*import\s+[^#\n]*,", source, flags=re.MULTILINE)


def test_unknown_metric_raises_listing_known():
    with pytest.raises(ValueError, match=r"accuracy.*macro_f1"):
        load_metric("f1_micro")
    with pytest.raises(ValueError, match="accuracy"):
        metric_dir("bleu")


def test_accuracy_offline(offline):
    import evaluate

    acc = load_metric("accuracy")
    assert isinstance(acc, evaluate.EvaluationModule)
    # 3 of 4 correct
    assert acc.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2]) == {"accuracy": pytest.approx(0.75)}
    assert acc.compute(predictions=[1, 1], references=[0, 0])["accuracy"] == 0.0
    assert acc.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], normalize=False)["accuracy"] == 3.0
    # weighted: (3 * 1 + 1 * 0) / (3 + 1) = 0.75
    assert acc.compute(predictions=[0, 1], references=[0, 2], sample_weight=[3.0, 1.0])["accuracy"] == pytest.approx(
        0.75
    )
    # numpy inputs and incremental batches: 2 + 0 correct of 3
    acc.add_batch(predictions=np.array([0, 1]), references=np.array([0, 1]))
    acc.add_batch(predictions=[2], references=[0])
    assert acc.compute()["accuracy"] == pytest.approx(2 / 3)


def test_macro_f1_offline(offline):
    f1 = load_metric("macro_f1")
    # preds [0,0,1,2] refs [0,1,1,2]:
    #   class 0: TP=1 FP=1 FN=0 -> F1 = 2/(2+1) = 2/3
    #   class 1: TP=1 FP=0 FN=1 -> F1 = 2/3
    #   class 2: TP=1 FP=0 FN=0 -> F1 = 1
    #   macro = (2/3 + 2/3 + 1) / 3 = 7/9
    preds, refs = [0, 0, 1, 2], [0, 1, 1, 2]
    assert f1.compute(predictions=preds, references=refs) == {"macro_f1": pytest.approx((2 / 3 + 2 / 3 + 1) / 3)}
    # explicit labels: unseen class 3 scores 0 -> (2/3 + 2/3 + 1 + 0) / 4 = 7/12
    assert f1.compute(predictions=preds, references=refs, labels=[0, 1, 2, 3])["macro_f1"] == pytest.approx(7 / 12)
    # explicit subset of labels: only class 1 -> 2/3
    assert f1.compute(predictions=preds, references=refs, labels=[1])["macro_f1"] == pytest.approx(2 / 3)
    # a label only in predictions counts: preds [0,1,2] refs [0,1,1]
    #   class 0: F1 = 1; class 1: TP=1 FP=0 FN=1 -> 2/3; class 2: TP=0 FP=1 FN=0 -> 0; macro = 5/9
    assert f1.compute(predictions=[0, 1, 2], references=[0, 1, 1])["macro_f1"] == pytest.approx(5 / 9)
    assert f1.compute(predictions=[4, 4], references=[4, 4])["macro_f1"] == 1.0


def test_load_by_plain_evaluate_path(offline):
    import evaluate

    for name, key, expected in [("accuracy", "accuracy", 0.75), ("macro_f1", "macro_f1", 7 / 9)]:
        module = evaluate.load(str(metric_dir(name)), keep_in_memory=True)
        out = module.compute(predictions=[0, 0, 1, 2], references=[0, 1, 1, 2])
        assert out[key] == pytest.approx(expected)


def test_macro_f1_matches_sklearn(offline):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    f1 = load_metric("macro_f1")
    for _ in range(5):
        refs = rng.integers(0, 4, size=50)
        preds = rng.integers(0, 5, size=50)
        expected = sklearn_metrics.f1_score(refs, preds, average="macro", zero_division=0)
        assert f1.compute(predictions=preds, references=refs)["macro_f1"] == pytest.approx(expected)

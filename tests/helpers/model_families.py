"""Tiny random models of every sequence-classification family, built from configs (no downloads).

Each family gets a 2-layer, 64-wide model (about 100k-300k parameters) over a 1,000-token vocabulary
trained here with ``tokenizers``: a WordPiece tokenizer (BERT-style, with ``[PAD]``) for the encoders
and a byte-level BPE tokenizer without a pad token (GPT-2-style, ``<|endoftext|>`` only) for the decoders.
The fixtures that build the folders live in ``conftest.py``; this module holds the plain builders.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "recipes" / "data" / "quickstart"
VOCAB = 1000
EOS = "<|endoftext|>"

#: family -> (config keyword arguments, tokenizer kind). ``{ids}`` entries are filled from the tokenizer.
_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
_DECODER = dict(_SMALL, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False)
FAMILIES: dict[str, tuple[dict[str, Any], str]] = {
    "bert": (dict(_SMALL, max_position_embeddings=64), "wordpiece"),
    "roberta": (dict(_SMALL, max_position_embeddings=66), "wordpiece"),
    "deberta-v2": (dict(_SMALL, max_position_embeddings=64, relative_attention=True, position_buckets=16), "wordpiece"),
    "distilbert": (dict(dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_position_embeddings=64), "wordpiece"),
    "electra": (dict(_SMALL, embedding_size=64, max_position_embeddings=64), "wordpiece"),
    "modernbert": (dict(_SMALL, max_position_embeddings=64, local_attention=16), "wordpiece"),
    "gpt2": (dict(n_embd=64, n_layer=2, n_head=2, n_positions=64), "bpe"),
    "llama": (_DECODER, "bpe"),
    "qwen2": (_DECODER, "bpe"),
    "mistral": (_DECODER, "bpe"),
}
DECODERS = ("gpt2", "llama", "qwen2", "mistral")


def available_families() -> list[str]:
    """The families of :data:`FAMILIES` the installed transformers has."""
    from transformers import CONFIG_MAPPING

    return [family for family in FAMILIES if family in CONFIG_MAPPING]


def sample_texts() -> list[str]:
    """The quickstart data's training texts (what the tokenizers are trained on)."""
    texts = []
    for path in sorted(SAMPLE.glob("*/train.csv")):
        with path.open(newline="") as handle:
            texts.extend(row["text"] for row in csv.DictReader(handle))
    return texts


def wordpiece_tokenizer() -> Any:
    """A BERT-style WordPiece ``PreTrainedTokenizerFast`` with ``[PAD]``, ``[CLS] ... [SEP]``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(sample_texts(), trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def bpe_tokenizer() -> Any:
    """A GPT-2-style byte-level BPE ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` and no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(sample_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS)


def tiny_config(family: str, tokenizer: Any, num_labels: int = 3) -> Any:
    """The family's tiny config, its special token ids taken from ``tokenizer``."""
    from transformers import AutoConfig

    options, _ = FAMILIES[family]
    ids = {"vocab_size": len(tokenizer)}
    for token in ("pad", "bos", "eos", "cls", "sep"):
        value = getattr(tokenizer, f"{token}_token_id", None)
        if value is not None:
            ids[f"{token}_token_id"] = value
    ids.setdefault("bos_token_id", ids.get("cls_token_id"))  # WordPiece: [CLS] and [SEP] start and end
    ids.setdefault("eos_token_id", ids.get("sep_token_id"))
    return AutoConfig.for_model(family, num_labels=num_labels, **options, **ids)


def save_tiny_model(family: str, folder: Path, tokenizer: Any, seed: int = 0) -> Path:
    """Saves a random ``AutoModelForSequenceClassification`` of ``family`` and ``tokenizer`` into ``folder``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(family, tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_config(model_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """A 2-task run (16 training, 16 test examples each) on the quickstart data, 2 steps per task."""

    def task(name: str, **extra: Any) -> dict[str, Any]:
        files = {split: str(SAMPLE / name / f"{split}.csv") for split in ("train", "test")}
        return {"name": name, "data_files": files, "max_train_samples": 16, "max_eval_samples": 16, **extra}

    config = {
        "model": str(model_dir),
        "labels": ["negative", "neutral", "positive"],
        "max_length": 32,
        "seed": 0,
        "training": {
            "optim": "classp",
            "optim_args": "power=1,eps=1e-8",
            "learning_rate": 1e-2,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 16,
            "disable_tqdm": True,
            "report_to": "none",
        },
        "tasks": [
            task("financial_phrasebank"),
            task("amazon_reviews", label_map={"negative": "negative", "positive": "positive"}),
        ],
    }
    config.update(overrides)
    return config

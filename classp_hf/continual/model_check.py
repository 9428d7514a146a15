"""Checking a run's model before anything is loaded or written: the folder, its files, its config.json.

:func:`check_model` reads only ``config.json`` (through ``AutoConfig``), never the weights, so the
runner and the probe call it first: a missing folder, a folder without weights or tokenizer, an
empty folder, a broken ``config.json`` or a ``max_length`` beyond the model's position embeddings
each give one line naming ``config.model`` or ``config.max_length``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classp_hf.continual.config import ConfigError, RunConfig, resolve_model_path

__all__ = ["ModelInfo", "check_model", "looks_like_hub_id"]

#: Weight files ``from_pretrained`` reads (sharded ones included).
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
#: Files one of which a tokenizer folder holds (fast tokenizer, its config, WordPiece/BPE vocab, SentencePiece).
TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "*.model")
#: Config attributes that hold the number of position embeddings, by model family.
_POSITION_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx")
#: Families whose position ids start after the padding index (RoBERTa's 514 embeddings give 512 tokens).
_PADDING_OFFSET_TYPES = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "roberta-prelayernorm", "data2vec-text"}
)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`check_model` found out about a run's model.

    Args:
        name: ``config.model`` as written.
        path: the folder or Hub id ``from_pretrained`` gets (``pkg:`` resolved).
        local: whether ``path`` is a local folder (else a Hub id).
        model_type: ``config.json``'s ``model_type`` (``bert``).
        max_position_embeddings: the number of position embeddings, or `None` if the config has none.
        max_length_limit: the longest input the model takes, or `None` if unknown.
        saved_dtype: the dtype the weights were saved in (``float32``), or `None` if not recorded.
    """

    name: str
    path: str
    local: bool
    model_type: str | None
    max_position_embeddings: int | None
    max_length_limit: int | None
    saved_dtype: str | None


def looks_like_hub_id(model: str) -> bool:
    """Whether a string reads as a Hub id (``bert-base-uncased``, ``org/name``) rather than a path."""
    return _HUB_ID.fullmatch(model) is not None and ".." not in model


def _any_file(folder: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in patterns)


def _check_folder(folder: Path) -> None:
    """A local model folder: exists, is a folder, holds config.json, weights and tokenizer files."""
    if not folder.exists():
        raise ConfigError(f"config.model: folder not found: {folder}")
    if not folder.is_dir():
        raise ConfigError(f"config.model: {folder} is a file; give the model's folder")
    if next(folder.iterdir(), None) is None:
        raise ConfigError(f"config.model: the folder {folder} is empty (expected config.json, weights, tokenizer)")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"config.model: no config.json in {folder}")
    if not _any_file(folder, WEIGHT_PATTERNS):
        raise ConfigError(f"config.model: no weights in {folder} (expected {' or '.join(WEIGHT_PATTERNS)})")
    if not _any_file(folder, TOKENIZER_PATTERNS):
        raise ConfigError(
            f"config.model: no tokenizer files in {folder} (expected {', '.join(TOKENIZER_PATTERNS)}); "
            "without them transformers builds a tokenizer with an empty vocabulary"
        )


def _load_config(path: str, name: str, local: bool) -> Any:
    import warnings

    from transformers import AutoConfig

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoConfig.from_pretrained(path)
    except Exception as error:  # OSError, ValueError, JSONDecodeError, KeyError for broken files
        lines = str(error).strip().splitlines()
        first = lines[0] if lines else type(error).__name__
        where = f"{path}/config.json" if local else f"{name!r} from the Hugging Face Hub"
        raise ConfigError(f"config.model: cannot read {where}: {first}") from None


def _position_limit(model_config: Any) -> tuple[int | None, int | None]:
    positions = next(
        (
            value
            for attribute in _POSITION_ATTRIBUTES
            if isinstance(value := getattr(model_config, attribute, None), int)
        ),
        None,
    )
    if positions is None:
        return None, None
    limit = positions
    pad = getattr(model_config, "pad_token_id", None)
    if getattr(model_config, "model_type", None) in _PADDING_OFFSET_TYPES and isinstance(pad, int):
        limit = positions - pad - 1
    return positions, limit


def _dtype_name(model_config: Any) -> str | None:
    dtype = getattr(model_config, "dtype", None)
    if dtype is None:
        return None
    return str(dtype).removeprefix("torch.")


def check_model(config: RunConfig) -> ModelInfo:
    """Checks ``config.model`` and ``config.max_length`` from the model's config.json only.

    A local folder (or ``pkg:`` model) must exist and hold ``config.json``, weights
    (``*.safetensors`` / ``pytorch_model*.bin``) and tokenizer files. A string that is no existing
    path and reads as a Hub id (``org/name``) is left to the Hub: only its config is fetched (or
    read from the cache). ``max_length`` must not exceed the model's position embeddings.

    Args:
        config: the validated run config.

    Returns:
        The :class:`ModelInfo`.

    Raises:
        ConfigError: one line naming ``config.model`` (missing or empty folder, a file, no weights,
            no tokenizer, an unreadable config.json or Hub id) or ``config.max_length`` (with the limit).
    """
    path = resolve_model_path(config.model)
    folder = Path(path).expanduser()
    local = folder.exists() or config.model.startswith("pkg:") or not looks_like_hub_id(path)
    if local:
        _check_folder(folder)
        path = str(folder)
    model_config = _load_config(path, config.model, local)
    positions, limit = _position_limit(model_config)
    if limit is not None and config.max_length > limit:
        raise ConfigError(
            f"config.max_length: {config.max_length} is more than the model takes ({limit} positions); "
            f"use at most {limit}"
        )
    return ModelInfo(
        name=config.model,
        path=path,
        local=local,
        model_type=getattr(model_config, "model_type", None),
        max_position_embeddings=positions,
        max_length_limit=limit,
        saved_dtype=_dtype_name(model_config),
    )

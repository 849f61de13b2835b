"""Serving a classifier: predictors (texts -> logits), int8 variants, and paired timing.

Serving speed is the CPU's by default (``TorchPredictor``, fp32 eager); on a machine with a GPU the
same predictor and timing run again with ``device="cuda"`` and are reported apart, under the
device's name, never mixed with the CPU figures.

A predictor is what a serving process runs per request: tokenize, forward, logits. Timing it whole
counts the tokenizer, which a student with a pruned vocabulary must not make slower.

Int8 goes through ONNX Runtime: the model is exported with torch's dynamo ONNX exporter (dynamic
batch and sequence axes) and its weights quantized with ``onnxruntime.quantization.quantize_dynamic``
(int8 weights, activations quantized per batch at run time). torch.ao's ``quantize_dynamic``, the
path used before, is deprecated and due for removal; it stays here only as ``TorchAoInt8`` so the
benchmark can compare the two.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

Predictor = Callable[[Sequence[str]], Any]  # texts -> numpy logits (rows, classes)


class TorchPredictor:
    """fp32 eager PyTorch on ``device`` (the CPU unless told otherwise); the model moves there."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int = 64, device: str = "cpu") -> None:
        self.model, self.tokenizer, self.max_length, self.device = model.to(device).eval(), tokenizer, max_length, device

    def __call__(self, texts: Sequence[str]) -> Any:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)).logits
        return logits.cpu().numpy()  # on CUDA the copy back waits for the GPU: a timing covers the work


class OnnxPredictor:
    """An ONNX Runtime session on the CPU, with as many intra-op threads as torch uses."""

    def __init__(self, path: Path, tokenizer: Any, *, max_length: int = 64) -> None:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same share of the machine as the torch models
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer, self.max_length, self.path = tokenizer, max_length, path

    def __call__(self, texts: Sequence[str]) -> Any:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        feed = {"input_ids": batch["input_ids"].astype("int64"), "attention_mask": batch["attention_mask"].astype("int64")}
        return self.session.run(["logits"], feed)[0]


def export_onnx(model: Any, tokenizer: Any, path: Path) -> Path:
    """Export ``model`` (CPU, fp32) to ONNX with dynamic batch and sequence axes.

    The example batch holds two texts of different lengths, so the traced graph is the one that
    applies a padding mask (a batch without padding may take a maskless attention path).
    """
    example = tokenizer(["a short one", "a rather longer example text to pad the other"], padding=True, return_tensors="pt")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    model = model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(model, (), kwargs={"input_ids": example["input_ids"], "attention_mask": example["attention_mask"]},
                                dynamo=True, dynamic_shapes=shapes, input_names=["input_ids", "attention_mask"],
                                output_names=["logits"], verbose=False, report=False)
    program.save(str(path))
    return path


def onnx_int8(model: Any, tokenizer: Any, folder: Path, *, max_length: int = 64) -> OnnxPredictor:
    """Export, quantize (int8 weights, dynamic activations) and load an int8 ONNX Runtime predictor."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = export_onnx(model, tokenizer, folder / "model.onnx")
    int8 = folder / "model.int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return OnnxPredictor(int8, tokenizer, max_length=max_length)


class TorchAoInt8(TorchPredictor):
    """torch.ao's deprecated int8 dynamic quantization (Linear layers only), for comparison."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int = 64) -> None:
        import copy
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice, on every call
            quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), {torch.nn.Linear}, dtype=torch.qint8)
        super().__init__(quantized, tokenizer, max_length=max_length)


def predict(predictor: Predictor, texts: Sequence[str], *, batch_size: int = 64) -> Any:
    """Logits for every text, in order."""
    import numpy as np

    parts = [predictor(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def paired_speed(predictors: dict[str, Predictor], texts: Sequence[str], *, serving_batch: int = 64, samples: int = 50,
                 batches: int = 5, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Per predictor: latency p50 at batch 1 (ms) and throughput at ``serving_batch`` (rows/s).

    The predictors take turns, round after round, and each keeps its best round: on a machine
    shared with other jobs a burst of load during one model's turn would otherwise decide the
    ratio; alternating compares them under like load. Every turn sees the same texts.
    """
    pool = list(texts) * (1 + (serving_batch * batches) // max(1, len(texts)))
    best: dict[str, dict[str, float]] = {who: {} for who in predictors}
    for who, predictor in predictors.items():
        for text in pool[:3]:
            predictor([text])  # warm-up: first calls pay for allocation and kernel selection
    for _ in range(rounds):
        for who, predictor in predictors.items():
            latency = statistics.median(_seconds(predictor, [t]) for t in pool[:samples]) * 1000
            seconds = sum(_seconds(predictor, pool[i * serving_batch : (i + 1) * serving_batch]) for i in range(batches))
            throughput = serving_batch * batches / seconds
            best[who]["latency_p50_ms"] = min(best[who].get("latency_p50_ms", latency), latency)
            best[who]["throughput_per_s"] = max(best[who].get("throughput_per_s", throughput), throughput)
    return best


def _seconds(predictor: Predictor, texts: Sequence[str]) -> float:
    start = time.perf_counter()
    predictor(texts)
    return time.perf_counter() - start

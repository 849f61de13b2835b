"""Knowledge distillation: a shallower student cut from its teacher, trained on what the teacher computes.

The student keeps the teacher's architecture with fewer encoder layers, each initialised from a
teacher layer chosen by a layer map (``teacher_layers``). Optionally its vocabulary shrinks to the
word pieces the training corpus uses: in MiniLM-L6 the 30,522 x 384 embedding table is about half
the parameters, and an intent corpus uses a few thousand pieces. The student is an ordinary
``BertForSequenceClassification`` (or whatever class the teacher is) and saves and loads like any
baseline model.

``DistillLoss`` trains it on the teacher's soft logits and the hard labels, and on intermediate
targets computed by the frozen teacher for the same batch: hidden states (TinyBERT's MSE between
mapped layers), attention distributions (KL between the attention probability maps, per head) and
MiniLM's value relations (KL between the scaled dot-products of the values with themselves).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, BertTokenizer

from specs.distill import LAYER_MAPS
from worker.ml.data import Examples

_LAYER = re.compile(r"\bencoder\.layer\.(\d+)\.")


def stratified_sample(examples: Examples, fraction: float, seed: int) -> Examples:
    """A seeded ``fraction`` of each label's rows (at least one per label), in the original order."""
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(examples.labels):
        by_label.setdefault(label, []).append(i)
    rng = random.Random(seed)
    keep = []
    for label in sorted(by_label):
        rows = by_label[label]
        keep += rng.sample(rows, max(1, round(fraction * len(rows))))
    return examples.pick(sorted(keep))


def teacher_layers(teacher_count: int, student_count: int, how: str = "uniform") -> list[int]:
    """Which teacher layer each student layer copies (0-based).

    ``uniform``: evenly spaced, ending with the last (TinyBERT's g(m) = m * T / S): 6 -> 3 gives
    [1, 3, 5], 6 -> 2 gives [2, 5]. ``ends``: the first and the last kept, evenly spaced between:
    6 -> 3 gives [0, 3, 5]. ``bottom``: the lowest layers, the top ones dropped (Sajjad et al. 2020
    found top-layer dropping the strongest of the simple strategies): 6 -> 3 gives [0, 1, 2].
    """
    if how == "uniform":
        return [math.ceil((i + 1) * teacher_count / student_count) - 1 for i in range(student_count)]
    if how == "ends":
        if student_count == 1:
            return [teacher_count - 1]
        return [math.floor(i * (teacher_count - 1) / (student_count - 1) + 0.5) for i in range(student_count)]
    if how == "bottom":
        return list(range(student_count))
    raise ValueError(f"layer map {how!r}: choose one of {', '.join(LAYER_MAPS)}")


@dataclass(frozen=True)
class Student:
    model: Any
    tokenizer: Any
    layers: tuple[int, ...]  # the teacher layer each student layer was initialised from
    teacher_ids: Any  # LongTensor: student token id -> teacher token id; None when the vocabulary is the teacher's


def build_student(teacher: Any, tokenizer: Any, *, layers: int, corpus: Sequence[str] = (), layer_map: str = "uniform") -> Student:
    """``layers`` encoder layers copied from ``teacher`` as ``layer_map`` says; vocabulary pruned to
    the pieces ``corpus`` uses when it is given, else the teacher's tokenizer unchanged."""
    import copy

    keep_ids = _used_piece_ids(tokenizer, corpus) if corpus else None
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers
    if keep_ids is not None:
        config.vocab_size = len(keep_ids)
        config.pad_token_id = keep_ids.index(tokenizer.pad_token_id)
    student = AutoModelForSequenceClassification.from_config(config)
    mapping = teacher_layers(teacher.config.num_hidden_layers, layers, layer_map)
    student.load_state_dict(_student_state(teacher.state_dict(), student.state_dict(), mapping, keep_ids))
    if keep_ids is None:
        return Student(student, tokenizer, tuple(mapping), None)
    return Student(student, _pruned_tokenizer(tokenizer, keep_ids), tuple(mapping), torch.tensor(keep_ids))


def _student_state(teacher_state: dict, student_state: dict, mapping: list[int], keep_ids) -> dict:
    """The student's state dict filled from the teacher's: layer i from layer ``mapping[i]``."""
    state = {}
    for key in student_state:
        source = _LAYER.sub(lambda m: f"encoder.layer.{mapping[int(m.group(1))]}.", key)
        weight = teacher_state[source]
        if keep_ids is not None and key.endswith("word_embeddings.weight"):
            weight = weight[torch.tensor(keep_ids)]
        state[key] = weight.clone()
    return state


def _used_piece_ids(tokenizer: Any, corpus: Sequence[str]) -> list[int]:
    """Ids of the special tokens, every single-character piece (so unseen words still spell out
    instead of collapsing to [UNK]) and every piece ``corpus`` tokenizes into; sorted."""
    vocab = tokenizer.get_vocab()
    used = set(tokenizer.all_special_ids)
    used |= {i for token, i in vocab.items() if len(token.removeprefix("##")) == 1}
    for start in range(0, len(corpus), 1000):
        for ids in tokenizer(list(corpus[start : start + 1000]), add_special_tokens=False)["input_ids"]:
            used.update(ids)
    return sorted(used)


def _pruned_tokenizer(tokenizer: Any, keep_ids: list[int]) -> Any:
    """A WordPiece tokenizer over the kept pieces, in the teacher's order (so ids map row for row).

    Greedy longest-match WordPiece over a subset of the vocabulary splits a word into the same
    pieces whenever the teacher's pieces for it were kept, as they are for every training text: the
    teacher sees the very token sequence the student sees, which the intermediate losses rely on.
    """
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    vocab = {by_id[i]: new for new, i in enumerate(keep_ids)}
    return BertTokenizer(vocab=vocab, do_lower_case=getattr(tokenizer, "do_lower_case", True),
                         model_max_length=tokenizer.model_max_length)


@dataclass(frozen=True)
class LossWeights:
    """How much each target counts. Soft logits get ``1 - alpha``, hard labels ``alpha``; the
    intermediate terms add on top with their own weights (0 turns one off and skips its work)."""

    temperature: float = 2.0
    alpha: float = 0.5
    hidden: float = 0.0
    attention: float = 0.0
    value: float = 0.0
    attention_layers: str = "all"  # "all": every student layer vs its target; "last": the last only (MiniLM)


class DistillLoss:
    """A ``loss_fn`` for ``train``: student and frozen teacher run on the same batch, every step.

    Intermediate targets are too large to precompute for a whole sample (6 layers x tokens x 384 per
    row), and the teacher's forward pass costs about a third of a student's training step, so the
    teacher runs under ``torch.no_grad()`` per batch. Student layer ``i`` is trained toward teacher
    layer ``targets[i]`` (by default the uniform map, which ends on the layer the classifier head
    reads); the embedding outputs are matched too, as in TinyBERT.
    """

    def __init__(self, teacher: Any, weights: LossWeights, *, targets: Sequence[int], teacher_ids: Any = None) -> None:
        self.teacher, self.weights, self.targets, self.teacher_ids = teacher, weights, list(targets), teacher_ids
        teacher.eval()
        self.last_terms: dict[str, float] = {}  # each term of the latest batch, for logging

    def __call__(self, model: Any, batch: dict[str, Any], labels: Any, indices: Sequence[int]) -> Any:
        w = self.weights
        self.teacher.to(batch["input_ids"].device)  # train() moves only the student; a no-op once there
        layers = self._attention_layers(model)
        with _projections(model, layers) as student_qkv:
            out = model(**batch, output_hidden_states=w.hidden > 0)
        with torch.no_grad(), _projections(self.teacher, [self.targets[i] for i in layers]) as teacher_qkv:
            target = self.teacher(**self._teacher_batch(batch), output_hidden_states=w.hidden > 0)
        terms = {"soft": soft_kl(out.logits, target.logits, w.temperature) * w.temperature**2,
                 "hard": torch.nn.functional.cross_entropy(out.logits.float(), labels)}
        loss = (1 - w.alpha) * terms["soft"] + w.alpha * terms["hard"]
        mask = batch["attention_mask"]
        if w.hidden > 0:
            terms["hidden"] = hidden_mse(out.hidden_states, target.hidden_states, self.targets, mask)
            loss = loss + w.hidden * terms["hidden"]
        if layers:
            heads = model.config.num_attention_heads
            pairs = list(zip(student_qkv, teacher_qkv))
            if w.attention > 0:
                terms["attention"] = _mean(relation_kl(s[0], s[1], t[0], t[1], mask, heads) for s, t in pairs)
                loss = loss + w.attention * terms["attention"]
            if w.value > 0:
                terms["value"] = _mean(relation_kl(s[2], s[2], t[2], t[2], mask, heads) for s, t in pairs)
                loss = loss + w.value * terms["value"]
        self.last_terms = {name: float(value.detach()) for name, value in terms.items()}
        return loss

    def _attention_layers(self, model: Any) -> list[int]:
        if self.weights.attention == 0 and self.weights.value == 0:
            return []
        count = model.config.num_hidden_layers
        return [count - 1] if self.weights.attention_layers == "last" else list(range(count))

    def _teacher_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.teacher_ids is None:
            return batch
        ids = self.teacher_ids.to(batch["input_ids"].device)
        return {**batch, "input_ids": ids[batch["input_ids"]]}


def _mean(values) -> Any:
    values = list(values)
    return sum(values) / len(values)


def soft_kl(student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
    """KL(teacher_T || student_T), batch mean (Hinton et al., 2015); multiply by T^2 to keep its
    gradients on the scale of the hard term's as T grows."""
    return F.kl_div(F.log_softmax(student_logits.float() / temperature, dim=-1),
                    F.log_softmax(teacher_logits.float() / temperature, dim=-1), reduction="batchmean", log_target=True)


def hidden_mse(student_states: Sequence[Any], teacher_states: Sequence[Any], targets: Sequence[int], mask: Any) -> Any:
    """Mean squared error between the student's hidden states and the teacher's mapped ones, over
    real tokens only (padding is masked out): the embedding outputs, then layer i vs ``targets[i]``.

    ``hidden_states[0]`` is the embedding output and ``hidden_states[k + 1]`` layer k's output.
    """
    keep = mask.unsqueeze(-1).float()
    pairs = [(student_states[0], teacher_states[0])]
    pairs += [(student_states[i + 1], teacher_states[t + 1]) for i, t in enumerate(targets)]
    per_token = keep.sum() * student_states[0].shape[-1]
    return _mean((((s.float() - t.float()) ** 2) * keep).sum() / per_token for s, t in pairs)


def relation_kl(s_left: Any, s_right: Any, t_left: Any, t_right: Any, mask: Any, heads: int) -> Any:
    """KL(teacher || student) between per-head relation distributions softmax(L R^T / sqrt(d)).

    With (query, key) projections that is the attention probability map; with (value, value) it is
    MiniLM's value relation. Padded keys get no probability and padded query rows do not count.
    """
    def log_relation(left: Any, right: Any) -> Any:
        b, n, width = left.shape
        d = width // heads
        lhs = left.float().view(b, n, heads, d).transpose(1, 2)
        rhs = right.float().view(b, n, heads, d).transpose(1, 2)
        scores = lhs @ rhs.transpose(-1, -2) / math.sqrt(d)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e4)
        return F.log_softmax(scores, dim=-1)

    student, teacher = log_relation(s_left, s_right), log_relation(t_left, t_right)
    per_row = (teacher.exp() * (teacher - student)).sum(-1)  # (batch, heads, queries)
    rows = mask[:, None, :].float().expand_as(per_row)
    return (per_row * rows).sum() / rows.sum()


class _projections:
    """Capture the query, key and value projections (batch, tokens, hidden) of the given encoder
    layers during one forward pass; the hooks are removed on exit, so nothing lingers on the model."""

    def __init__(self, model: Any, layers: Sequence[int]) -> None:
        self.modules = [model.base_model.encoder.layer[i].attention.self for i in layers]
        self.captured: list[list[Any]] = [[None, None, None] for _ in layers]
        self.handles: list[Any] = []

    def __enter__(self) -> list[list[Any]]:
        for slot, module in zip(self.captured, self.modules):
            for j, linear in enumerate((module.query, module.key, module.value)):
                self.handles.append(linear.register_forward_hook(_keep(slot, j)))
        return self.captured

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()


def _keep(slot: list, j: int):
    def hook(module: Any, inputs: Any, output: Any) -> None:
        slot[j] = output

    return hook

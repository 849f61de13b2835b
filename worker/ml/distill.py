"""Knowledge distillation: a shallower student cut from its teacher, trained on soft targets.

The student keeps the teacher's architecture with fewer encoder layers, each initialised from an
evenly spaced teacher layer (the last one always kept: the classifier head was trained on its
output). Optionally its vocabulary shrinks to the word pieces the training corpus uses: in MiniLM-L6
the 30,522 x 384 embedding table is about half the parameters, and an intent corpus uses a few
thousand pieces. The student is an ordinary ``BertForSequenceClassification`` (or whatever class the
teacher is) and saves and loads like any baseline model.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

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


def teacher_layers(teacher_count: int, student_count: int) -> list[int]:
    """Evenly spaced teacher layers ending with the last: 6 -> 3 gives [1, 3, 5] (every other)."""
    return [math.ceil((i + 1) * teacher_count / student_count) - 1 for i in range(student_count)]


def build_student(teacher: Any, tokenizer: Any, *, layers: int, corpus: Sequence[str] = ()) -> tuple[Any, Any]:
    """(student, tokenizer): ``layers`` encoder layers copied from ``teacher``; vocabulary pruned to
    the pieces ``corpus`` uses when it is given, else the teacher's tokenizer unchanged."""
    import copy

    from transformers import AutoModelForSequenceClassification

    keep_ids = _used_piece_ids(tokenizer, corpus) if corpus else None
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers
    if keep_ids is not None:
        config.vocab_size = len(keep_ids)
        config.pad_token_id = keep_ids.index(tokenizer.pad_token_id)
    student = AutoModelForSequenceClassification.from_config(config)
    mapping = teacher_layers(teacher.config.num_hidden_layers, layers)
    student.load_state_dict(_student_state(teacher.state_dict(), student.state_dict(), mapping, keep_ids))
    return student, (_pruned_tokenizer(tokenizer, keep_ids) if keep_ids is not None else tokenizer)


def _student_state(teacher_state: dict, student_state: dict, mapping: list[int], keep_ids) -> dict:
    """The student's state dict filled from the teacher's: layer i from layer ``mapping[i]``."""
    import torch

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
    """A WordPiece tokenizer over the kept pieces, in the teacher's order (so ids map row for row)."""
    from transformers import BertTokenizer

    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    vocab = {by_id[i]: new for new, i in enumerate(keep_ids)}
    return BertTokenizer(vocab=vocab, do_lower_case=getattr(tokenizer, "do_lower_case", True),
                         model_max_length=tokenizer.model_max_length)


def soft_target_loss(teacher_logits: Any, *, temperature: float, alpha: float) -> Any:
    """A ``loss_fn`` for ``train``: ``(1 - alpha) * KL(teacher_T || student_T) * T^2 + alpha * CE``.

    ``teacher_logits`` holds one row per training row, computed once before training (the teacher
    never changes, so one pass over the small sample beats a teacher forward in every step). The T^2
    keeps the soft term's gradients on the scale of the hard term's as T grows (Hinton et al., 2015).
    """
    import torch.nn.functional as F

    def loss_fn(logits: Any, labels: Any, indices: Sequence[int]) -> Any:
        target = teacher_logits[list(indices)].to(logits.device)
        soft = F.kl_div(F.log_softmax(logits.float() / temperature, dim=-1), F.log_softmax(target / temperature, dim=-1),
                        reduction="batchmean", log_target=True)
        hard = F.cross_entropy(logits.float(), labels)
        return (1 - alpha) * soft * temperature**2 + alpha * hard

    return loss_fn


def quantized(model: Any) -> Any:
    """An int8 dynamically quantized copy for CPU serving (Linear layers only; embeddings stay fp32)."""
    import copy

    import torch

    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), {torch.nn.Linear}, dtype=torch.qint8)

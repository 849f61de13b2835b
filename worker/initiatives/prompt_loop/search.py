"""Scoring prompt templates on labelled rows, and successive halving over many templates.

Two scorers share one interface, ``predict(template, texts) -> label indices``:

- ``EmbeddingScorer``: a sentence encoder (mean-pooled last hidden state, L2-normalised); an input
  goes to the label whose rendered prompt is nearest by cosine similarity.
- ``CausalLMScorer``: the log-likelihood of each label's words after the input and the template's
  text before ``{label}``, minus the same for a content-free input ("N/A"): contextual calibration
  (Zhao et al., "Calibrate Before Use", ICML 2021) removes the model's prior for each label.

``CausalLM`` also writes template variants from a meta-prompt.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
import transformers

from worker.initiatives.prompt_loop.templates import describe, render, split_template

DEFAULT_CAUSAL_LM = "gpt2"  # GPT-2 small from the hub, for users online
CONTENT_FREE = ("N/A",)


def load_pretrained(ref: str, auto_class: str) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a local folder or hub id, safetensors only."""
    from worker.ml.modeling import refuse_pickle_weights

    if Path(ref).exists():
        refuse_pickle_weights(Path(ref))
    model = getattr(transformers, auto_class).from_pretrained(ref, use_safetensors=True)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(ref)


class EmbeddingScorer:
    """Cosine similarity between an input's embedding and each label prompt's embedding."""

    def __init__(self, model_ref: str, labels: Sequence[str], *, batch_size: int = 64, max_length: int = 64) -> None:
        from worker.ml.modeling import default_model_path

        self.model, self.tokenizer = load_pretrained(model_ref or default_model_path(), "AutoModel")
        self.labels, self.batch_size, self.max_length = tuple(labels), batch_size, max_length
        # Inputs do not depend on the template: each text is embedded once per run.
        self._inputs: dict[str, Any] = {}
        self._prompts: OrderedDict[str, Any] = OrderedDict()  # template -> label matrix, recent first out

    def embed(self, texts: Sequence[str]) -> Any:
        """(len(texts), dim) unit vectors: mean of the last hidden state over real tokens."""
        # Batches of similar lengths pad less: CLINC150 queries run from 1 to 30 words.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = self.tokenizer([texts[i] for i in order[start:start + self.batch_size]], padding=True,
                                       truncation=True, max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                chunks.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        embeddings = torch.empty_like(torch.cat(chunks))
        embeddings[order] = torch.cat(chunks)
        return embeddings

    def predict(self, template: str, texts: Sequence[str]) -> list[int]:
        """The index of the nearest label prompt for each text."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._inputs]
        if missing:
            self._inputs.update(zip(missing, self.embed(missing), strict=True))
        inputs = torch.stack([self._inputs[t] for t in texts])
        return (inputs @ self._label_matrix(template).T).argmax(1).tolist()

    def _label_matrix(self, template: str) -> Any:
        if template not in self._prompts:
            # Successive halving asks for the same template again at each rung; keep recent ones.
            self._prompts[template] = self.embed([render(template, label) for label in self.labels])
            while len(self._prompts) > 256:
                self._prompts.popitem(last=False)
        return self._prompts[template]


class CausalLM:
    """A causal LM that scores continuations and samples text."""

    def __init__(self, model_ref: str, *, batch_size: int = 32, max_length: int = 128) -> None:
        self.model, self.tokenizer = load_pretrained(model_ref or DEFAULT_CAUSAL_LM, "AutoModelForCausalLM")
        self.batch_size = batch_size
        config = self.model.config
        window = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024)
        self.max_length = min(max_length, window)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        # transformers 5.2x renamed the cache argument; older models take past_key_values.
        accepted = inspect.signature(self.model.forward).parameters
        self._cache_argument = "cache" if "cache" in accepted else "past_key_values"
        self._last_logit_only = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def label_logprobs(self, context: list[int], continuations: Sequence[list[int]]) -> list[float]:
        """Sum of log P(continuation | context) for each continuation (one per label).

        The context runs through the model once and its key/value cache is shared by every
        continuation, so a text costs one context pass plus the label words, not one whole
        sequence per label."""
        context = context[-max(1, self.max_length - max(len(c) for c in continuations)):]
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([context]), use_cache=True, **self._last_logit_only)
            first = out.logits[0, -1].float().log_softmax(-1)  # what follows the context: each label's first token
            width = max(len(c) for c in continuations)
            total = torch.tensor([float(first[c[0]]) for c in continuations])
            if width == 1:
                return total.tolist()
            cache = getattr(out, "cache", None) or out.past_key_values
            cache.batch_repeat_interleave(len(continuations))
            ids = torch.full((len(continuations), width), self.pad_id, dtype=torch.long)
            for row, continuation in enumerate(continuations):
                ids[row, :len(continuation)] = torch.tensor(continuation)
            lengths = torch.tensor([len(c) for c in continuations])
            real = torch.arange(width)[None, :] < lengths[:, None]
            mask = torch.cat([torch.ones(len(continuations), len(context), dtype=torch.long), real.long()], 1)
            logits = self.model(input_ids=ids, attention_mask=mask, **{self._cache_argument: cache}).logits[:, :-1].float()
            # Position p predicts token p+1; gather minus logsumexp avoids a vocab-sized log_softmax copy.
            target = logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - logits.logsumexp(-1)
            return (total + (target * real[:, 1:]).sum(1)).tolist()

    def generate(self, prompt: str, n: int, *, temperature: float, max_new_tokens: int = 24) -> list[str]:
        """``n`` sampled continuations of ``prompt`` (new text only)."""
        context = self.ids(prompt)[-(self.max_length - max_new_tokens):]
        input_ids = torch.tensor([context])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                temperature=temperature, top_k=0, max_new_tokens=max_new_tokens, num_return_sequences=n,
                pad_token_id=self.pad_id,
            )
        return [self.tokenizer.decode(row[len(context):], skip_special_tokens=True) for row in out]


class CausalLMScorer:
    """Calibrated label-word likelihood under a causal LM, given the input and the template."""

    def __init__(self, lm: CausalLM, labels: Sequence[str], *, content_free: Sequence[str] = CONTENT_FREE) -> None:
        self.lm, self.labels, self.content_free = lm, tuple(labels), tuple(content_free)
        self._priors: dict[str, Any] = {}
        # GPT-2's BPE puts a word's space in front of it: label words after a newline have none.
        self._label_ids = {space: [lm.ids(space + describe(label)) for label in self.labels] for space in ("", " ")}

    def predict(self, template: str, texts: Sequence[str]) -> list[int]:
        """The label with the highest calibrated log-likelihood for each text."""
        return self.scores(template, texts).argmax(1).tolist()

    def scores(self, template: str, texts: Sequence[str], *, calibrated: bool = True) -> Any:
        """(len(texts), labels) log-likelihoods of each label's words, less the content-free prior if ``calibrated``."""
        # Only the text before {label} conditions the label words: templates sharing it score alike.
        raw = self._scores(split_template(template)[0], texts)
        return raw - self.prior(template) if calibrated else raw

    def prior(self, template: str) -> Any:
        """Each label's mean log-likelihood after the content-free inputs: what calibration subtracts."""
        before, _ = split_template(template)
        if before not in self._priors:
            self._priors[before] = self._scores(before, self.content_free).mean(0)
        return self._priors[before]

    def _scores(self, before: str, texts: Sequence[str]) -> Any:
        rows = []
        for text in texts:
            context = f"{text}\n{before}".rstrip(" ")
            labels = self._label_ids["" if context.endswith("\n") else " "]
            rows.append(self.lm.label_logprobs(self.lm.ids(context), labels))
        return torch.tensor(rows).view(len(texts), len(self.labels))


def build_scorer(kind: str, model_ref: str, labels: Sequence[str], *, batch_size: int, max_length: int) -> tuple[Any, Optional[CausalLM]]:
    """(scorer, the causal LM inside it or None) for ``kind`` ``embedding`` or ``causal_lm``."""
    if kind == "embedding":
        return EmbeddingScorer(model_ref, labels, batch_size=batch_size, max_length=max_length), None
    lm = CausalLM(model_ref, batch_size=batch_size, max_length=2 * max_length)
    return CausalLMScorer(lm, labels), lm


class Evaluator:
    """Predictions of each template on a fixed order of rows, extended as the template is promoted."""

    def __init__(self, scorer: Any, texts: Sequence[str], gold: Sequence[int]) -> None:
        self.scorer, self.texts, self.gold = scorer, tuple(texts), tuple(gold)
        self._predictions: dict[str, list[int]] = {}

    def accuracy(self, template: str, n: int) -> float:
        """Accuracy on the first ``n`` rows; only rows not yet scored for this template are scored now."""
        return sum(self.correct(template, n)) / n

    def correct(self, template: str, n: int) -> list[bool]:
        """Whether each of the first ``n`` rows is predicted right."""
        done = self._predictions.setdefault(template, [])
        if len(done) < n:
            done.extend(self.scorer.predict(template, self.texts[len(done):n]))
        return [p == g for p, g in zip(done[:n], self.gold[:n], strict=True)]


def rung_sizes(minibatch: int, total: int) -> list[int]:
    """Row counts of successive rungs: ``minibatch``, doubling, ending at ``total``."""
    sizes, n = [], min(minibatch, total)
    while n < total:
        sizes.append(n)
        n *= 2
    return sizes + [total]


def successive_halving(templates: Sequence[str], sizes: Sequence[int], score: Callable[[str, int], float],
                       stop: Callable[[], bool]) -> tuple[list[str], bool]:
    """(templates scored at the last size, whether ``stop`` cut it short).

    Every template is scored on ``sizes[0]`` rows, the better half is promoted to ``sizes[1]`` rows,
    and so on (Jamieson & Talwalkar, 2016): weak templates cost a minibatch, not the whole set.
    """
    alive = list(templates)
    for rung, size in enumerate(sizes):
        scored = []
        for template in alive:
            if stop():
                return [], True
            scored.append((score(template, size), template))
        if rung == len(sizes) - 1:
            break
        scored.sort(key=lambda pair: -pair[0])  # stable: ties keep the earlier proposal
        alive = [template for _, template in scored[: math.ceil(len(scored) / 2)]]
    return alive, False

"""prompt_loop: search zero-shot prompt templates on validation, report the best on test.

The parameters and their validation, free of torch: the producer checks them at admission and the
worker builds them again from the ledger row. The payload is ``worker.initiatives.prompt_loop``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InvalidInput

FIELD = "{label}"
MAX_CHARS = 100
SCORERS = ("embedding", "causal_lm")
_FIELD_RE = re.compile(r"\{([^{}]*)\}")


def validate_template(template: object, *, max_chars: int = MAX_CHARS) -> str:
    """The template with whitespace collapsed, or ``InvalidInput`` saying in one line what is wrong."""
    if not isinstance(template, str) or not template.strip():
        raise InvalidInput("template is empty")
    text = " ".join(template.split())  # a newline or tab inside a template is never meant
    shown = text if len(text) <= 40 else text[:37] + "..."
    if len(text) > max_chars:
        raise InvalidInput(f"template {shown!r} is {len(text)} characters long; at most {max_chars}")
    fields = _FIELD_RE.findall(text)
    unknown = [f for f in fields if f != "label"]
    if unknown:
        raise InvalidInput(f"template {shown!r} has unknown field {{{unknown[0]}}}; only {FIELD} is allowed")
    if len(fields) > 1:
        raise InvalidInput(f"template {shown!r} uses {FIELD} {len(fields)} times; use it once")
    if "{" in text.replace(FIELD, "", 1) or "}" in text.replace(FIELD, "", 1):
        raise InvalidInput(f"template {shown!r} has a stray or doubled brace; only {FIELD} may use braces")
    if not fields:
        raise InvalidInput(f"template {shown!r} has no {FIELD} field")
    return text


@dataclass(frozen=True)
class Params:
    dataset: str = "clinc150"  # clinc150, hf:NAME[:CONFIG], or a folder of train/val/test files
    variant: str = "full"  # clinc150 only: full, small, imbalanced or 10shot
    slice_column: str = "domain"
    # The first is the baseline that `improvement` is measured against. On the CLI commas separate them.
    seed_templates: tuple[str, ...] = ("a request about {label}",)
    scorer: str = "embedding"  # embedding or causal_lm
    scorer_model: str = ""  # folder or hub id; empty: the MiniLM-L6 package (embedding) or gpt2 (causal_lm)
    generator_model: str = ""  # causal LM that rewrites templates; empty: the scorer's, if it is one
    rounds: int = 4
    candidates_per_round: int = 16
    lm_variants: int = 4  # of each round's candidates, how many the LM is asked to write
    temperature: float = 0.9  # sampling above ~1 mostly breaks {label}; greedy would repeat itself
    parents: int = 4  # the best templates so far that mutation and crossover start from
    minibatch: int = 64  # validation rows of the first halving rung
    max_val: int = 0  # validation rows of the last rung; 0: all of them
    top_k: int = 3
    folds: int = 5  # validation folds for the top-k's spread
    max_chars: int = MAX_CHARS
    use_wordnet: bool = True
    batch_size: int = 64
    max_length: int = 64
    # The search ends at this share of the reservation, leaving the rest for the one test pass.
    search_share: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.seed_templates:
            raise ValueError("seed_templates needs at least one template")
        for template in self.seed_templates:
            try:
                validate_template(template, max_chars=self.max_chars)
            except InvalidInput as exc:
                raise ValueError(f"seed_templates: {exc}") from None
        if self.scorer not in SCORERS:
            raise ValueError(f"unknown scorer {self.scorer!r}; choose from {', '.join(SCORERS)}")
        for name in ("rounds", "candidates_per_round", "parents", "top_k", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.minibatch < 2 or self.folds < 2:
            raise ValueError("minibatch and folds must be at least 2")
        if self.max_val < 0 or self.lm_variants < 0:
            raise ValueError("max_val and lm_variants must not be negative")
        if not 0 < self.temperature <= 5 or not 0 < self.search_share <= 1:
            raise ValueError("temperature must be in (0, 5] and search_share in (0, 1]")
        if not 20 <= self.max_chars <= 500:
            raise ValueError("max_chars must be in [20, 500]")

"""Prompt templates for zero-shot classification: checking, rendering, and making variants of them.

A template is text with exactly one ``{label}`` field, e.g. ``"a request about {label}"``. Each label
name is rendered through it (``book_flight`` -> ``a request about book flight``) and an input goes to
the best-matching rendering. Variants come from mutation operators (WordNet synonyms, task-word
insertion, reordering, deletion, prefixes), from crossover of two templates, and from parsing what a
causal LM wrote. Pure Python, no torch: the producer validates templates given as parameters.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Optional

from core.errors import InvalidInput
from specs.prompt_loop import FIELD, MAX_CHARS, validate_template  # noqa: F401 - re-exported for the payload

# Words a label description might sit among; insertion draws from these.
TASK_WORDS = (
    "request", "query", "question", "intent", "user", "customer", "asking", "wants", "needs", "about",
    "for", "to", "the", "a", "help", "with", "regarding", "topic", "please", "my",
)
PREFIXES = ("This is", "Query:", "Intent:", "Request:", "Topic:", "The user wants", "A question about", "Help with")
ENDINGS = ("?", ".", "!", ":", "")
OPERATORS = ("synonym", "insert", "reorder", "delete", "prefix", "punctuate")
# WordNet offers "vitamin A" for "a" and "Department of Energy" for "do": only content words get synonyms.
_NO_SYNONYM = frozenset(TASK_WORDS[9:]) | {"an", "is", "this", "that", "of", "in", "on", "it", "i", "do"}

Synonyms = Callable[[str], Sequence[str]]




def describe(label: str) -> str:
    """A label name as words: ``book_flight`` -> ``book flight``."""
    return " ".join(label.replace("_", " ").split())


def render(template: str, label: str) -> str:
    """``template`` with ``{label}`` replaced by the label's description."""
    # replace, not str.format: a validated template has no other field, and a label may hold braces.
    return template.replace(FIELD, describe(label), 1)


def split_template(template: str) -> tuple[str, str]:
    """(text before ``{label}``, text after it)."""
    before, _, after = template.partition(FIELD)
    return before, after


def dedupe_key(template: str) -> str:
    """Templates that differ only in case, spacing or final punctuation count as repeats."""
    return " ".join(template.lower().split()).rstrip(".!?:;, ")


def check_candidate(text: str, seen: set[str], *, max_chars: int) -> tuple[Optional[str], str]:
    """(template, "") when ``text`` is a valid template not seen before, else (None, the reason)."""
    try:
        template = validate_template(text, max_chars=max_chars)
    except InvalidInput as exc:
        return None, str(exc)
    key = dedupe_key(template)
    if key in seen:
        return None, "repeats an earlier template"
    seen.add(key)
    return template, ""


def parse_generated(text: str) -> str:
    """The template in a causal LM's continuation: its first line, without quotes or a label."""
    line = text.strip().split("\n", 1)[0].strip()
    line = re.sub(r"^(rewritten template|template)\s*:\s*", "", line, flags=re.IGNORECASE)
    return line.strip().strip("\"'`").strip()


def mutate(template: str, operator: str, rng: random.Random, synonyms: Optional[Synonyms] = None) -> Optional[str]:
    """One application of ``operator`` (see ``OPERATORS``), or None where it cannot apply."""
    words = template.split()
    if operator == "synonym":
        return _synonym(words, rng, synonyms) if synonyms else None
    if operator == "insert":
        words.insert(rng.randrange(len(words) + 1), rng.choice(TASK_WORDS))
    elif operator == "reorder" and len(words) > 1:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif operator == "delete" and len(words) > 1:
        # A phrase, not only a word (GrIPS, Prasad et al. 2023): a run of words on one side of {label}.
        cut = next(i for i, w in enumerate(words) if FIELD in w)
        low, high = rng.choice([side for side in ((0, cut), (cut + 1, len(words))) if side[1] > side[0]])
        start = rng.randrange(low, high)
        del words[start:rng.randint(start + 1, high)]
    elif operator == "prefix":
        return _with_prefix(template, rng.choice(PREFIXES))
    elif operator == "punctuate":
        # Queries end in "?" or nothing; the ending alone moves embeddings measurably.
        words[-1] = words[-1].rstrip("".join(ENDINGS)) + rng.choice(ENDINGS)
    else:
        return None
    return " ".join(words)


def _synonym(words: list[str], rng: random.Random, synonyms: Synonyms) -> Optional[str]:
    options = [(i, s) for i, w in enumerate(words) if _content_word(w) for s in synonyms(w.lower())]
    if not options:
        return None
    i, synonym = rng.choice(options)
    words[i] = synonym.capitalize() if words[i][:1].isupper() else synonym
    return " ".join(words)


def _content_word(word: str) -> bool:
    return word.isalpha() and word.lower() not in _NO_SYNONYM and len(word) > 2


def _with_prefix(template: str, prefix: str) -> str:
    # A second prefix stacks badly ("Query: Intent: ..."): replace the one already there.
    for old in PREFIXES:
        if template.startswith(old + " "):
            template = template[len(old) + 1:]
            break
    rest = template if template.startswith(FIELD) else template[:1].lower() + template[1:]
    return f"{prefix} {rest}"


def crossover(a: str, b: str) -> str:
    """``a`` up to its ``{label}`` word, then ``b`` from its ``{label}`` word on."""
    head = a.split()
    tail = b.split()
    cut_a = next(i for i, w in enumerate(head) if FIELD in w)
    cut_b = next(i for i, w in enumerate(tail) if FIELD in w)
    return " ".join(head[:cut_a] + tail[cut_b:])


def propose(parents: Sequence[str], n: int, rng: random.Random, seen: set[str], *, max_chars: int,
            synonyms: Optional[Synonyms] = None) -> list[tuple[str, str]]:
    """Up to ``n`` new (template, origin) pairs from mutating and crossing ``parents``."""
    operators = [op for op in OPERATORS if op != "synonym" or synonyms] + (["crossover"] if len(parents) > 1 else [])
    found: list[tuple[str, str]] = []
    for _ in range(20 * n):  # most draws are repeats once the neighbourhood is explored
        if len(found) == n:
            break
        operator = rng.choice(operators)
        if operator == "crossover":
            a, b = rng.sample(list(parents), 2)
            text: Optional[str] = crossover(a, b)
        else:
            text = mutate(rng.choice(parents), operator, rng, synonyms)
        template, _ = check_candidate(text or "", seen, max_chars=max_chars) if text else (None, "")
        if template:
            found.append((template, operator))
    return found


def wordnet_synonyms() -> Optional[Synonyms]:
    """A synonym lookup backed by NLTK's WordNet, or None when WordNet cannot be loaded here."""
    try:
        from nltk.corpus import wordnet

        from worker.ml import wordnet as wn

        wn.ensure_wordnet()  # finds WordNet, or copies it from WORDNET_DIR; never downloads
    except (ImportError, LookupError, OSError, RuntimeError, wn.WordNetUnavailable):
        return None

    @lru_cache(maxsize=None)
    def synonyms(word: str) -> tuple[str, ...]:
        names = {lemma.name().replace("_", " ") for synset in wordnet.synsets(word) for lemma in synset.lemmas()}
        return tuple(sorted(n for n in names if n.lower() != word and "{" not in n))

    return synonyms


def save_top_prompts(path: Path, prompts: Iterable[dict], **about: object) -> Path:
    """Write the top-k prompts (ranked dicts with at least ``template``) and what they were scored with."""
    path.write_text(json.dumps({**about, "prompts": list(prompts)}, indent=2))
    return path


def load_top_prompts(path: Path) -> list[str]:
    """The templates of a ``top_prompts`` artifact, best first, each validated again."""
    data = json.loads(Path(path).read_text())
    max_chars = int(data.get("max_chars", MAX_CHARS))
    return [validate_template(p["template"], max_chars=max_chars) for p in data["prompts"]]


def meta_prompt(template: str) -> str:
    """The few-shot instruction a causal LM continues with one rewrite of ``template``."""
    # Two worked rewrites show the format: a model as small as GPT-2 copies the pattern, {label} included.
    return (
        "Rewrite each label template in new words. Keep {label} exactly once.\n"
        "Template: a question about {label}\nRewritten template: someone is asking about {label}\n"
        "Template: category: {label}\nRewritten template: this message is about {label}\n"
        f"Template: {template}\nRewritten template:"
    )

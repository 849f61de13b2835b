"""Text perturbations (the robustness suite) and augmenters (the augment initiative), mostly nlpaug.

A perturbation maps each text to one perturbed text; an augmenter maps each text to ``n`` variants.
Both are seeded: nlpaug draws from the global ``random`` and ``numpy`` generators, so each
operation reseeds them from the seed and its own name before it runs. Only ``synonym`` reads
WordNet; without it that operation raises ``WordNetUnavailable`` and the others still run.
"""

from __future__ import annotations

import random
import re
import string
import zlib
from typing import Callable, Optional, Sequence

from specs.augment import AUGMENTERS
from specs.robustness import PERTURBATIONS
from worker.ml.augment_compat import WordNetUnavailable

__all__ = ["AUGMENTERS", "PERTURBATIONS", "WordNetUnavailable", "augment", "perturb"]
NEEDS_WORDNET = frozenset({"synonym"})  # the perturbations that read WordNet (nlpaug's SynonymAug)

Op = Callable[[list[str]], list[str]]  # a batch of texts -> one output per text

# Each augmenter cycles through these perturbations, one per variant.
_AUGMENTER_OPS = {
    "char_noise": ("keyboard", "ocr", "random_char"),
    "word_noise": ("word_swap", "word_delete", "spelling"),
    "synonym": ("synonym",),
    "style": ("casing", "punctuation", "contractions"),
}
_CONTRACTIONS = {
    "do not": "don't", "does not": "doesn't", "did not": "didn't", "is not": "isn't", "are not": "aren't",
    "can not": "can't", "cannot": "can't", "will not": "won't", "would not": "wouldn't", "i am": "i'm",
    "i have": "i've", "i will": "i'll", "i would": "i'd", "you are": "you're", "it is": "it's",
    "what is": "what's", "where is": "where's", "how is": "how's", "that is": "that's", "let us": "let's",
}
_EXPANSIONS = {short: long for long, short in _CONTRACTIONS.items() if long != "cannot"}


def perturb(name: str, texts: Sequence[str], *, seed: int = 0) -> list[str]:
    """One perturbed copy of each text under perturbation ``name`` (see ``PERTURBATIONS``)."""
    return _seeded(name, seed, _op(name))(list(texts))


def augment(name: str, texts: Sequence[str], *, n: int, seed: int = 0, mlm_path: Optional[str] = None) -> list[list[str]]:
    """``n`` variants of each text from augmenter ``name`` (see ``AUGMENTERS``); may repeat or echo a text."""
    if name == "contextual":
        if not mlm_path:
            raise ValueError("the contextual augmenter needs a masked-LM path (mlm_path)")
        ops = [_contextual_op(mlm_path)]
    else:
        ops = [_op(op) for op in _AUGMENTER_OPS[name]]
    rounds = [_seeded(f"{name}.{i}", seed, ops[i % len(ops)])(list(texts)) for i in range(n)]
    return [list(variants) for variants in zip(*rounds)]


def _seeded(name: str, seed: int, op: Op) -> Op:
    def run(texts: list[str]) -> list[str]:
        import numpy as np

        mixed = (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32
        random.seed(mixed)
        np.random.seed(mixed)
        return op(texts)

    return run


def _op(name: str) -> Op:
    rules = {"casing": recase, "punctuation": strip_punctuation, "contractions": toggle_contractions}
    if name in rules:
        rule = rules[name]
        return lambda texts: [rule(t, random.Random(random.random())) for t in texts]
    return _nlpaug_op(name)


def _nlpaug_op(name: str) -> Op:
    from worker.ml import augment_compat

    augment_compat.apply()
    if name in NEEDS_WORDNET:
        augment_compat.ensure_wordnet()  # WordNetUnavailable: the caller skips this operation
    import nlpaug.augmenter.char as nac
    import nlpaug.augmenter.word as naw

    factories = {
        "keyboard": lambda: nac.KeyboardAug(aug_char_p=0.1, aug_word_p=0.2),
        "ocr": lambda: nac.OcrAug(aug_char_p=0.1, aug_word_p=0.2),
        "random_char": lambda: nac.RandomCharAug(action="substitute", aug_char_p=0.1, aug_word_p=0.2),
        "word_swap": lambda: naw.RandomWordAug(action="swap", aug_p=0.2),
        "word_delete": lambda: naw.RandomWordAug(action="delete", aug_p=0.2),
        "spelling": lambda: naw.SpellingAug(aug_p=0.2),
        "synonym": lambda: naw.SynonymAug(aug_src="wordnet", aug_p=0.3),
    }
    if name not in factories:
        raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    return _batch(factories[name]())


def _contextual_op(mlm_path: str) -> Op:
    from worker.ml import augment_compat
    from worker.ml.modeling import pick_device

    augment_compat.apply()
    import nlpaug.augmenter.word as naw

    # model_type "bert" selects nlpaug's own BERT wrapper, the one augment_compat patches.
    aug = naw.ContextualWordEmbsAug(model_path=mlm_path, model_type="bert", action="substitute", aug_p=0.2, device=pick_device())
    return _batch(aug)


def _batch(aug) -> Op:
    def run(texts: list[str]) -> list[str]:
        # nlpaug returns a list for a list, but leaves texts it cannot change (one word, no
        # candidates) as they are; an empty result would misalign rows, so fall back to the input.
        out = aug.augment(texts) if texts else []
        return [o if isinstance(o, str) and o.strip() else t for o, t in zip(out, texts)]

    return run


def recase(text: str, rng: random.Random) -> str:
    """UPPER, lower, Title or Sentence case, picked at random."""
    style = rng.choice((str.upper, str.lower, str.title, str.capitalize))
    return style(text)


def strip_punctuation(text: str, rng: Optional[random.Random] = None) -> str:
    """The text without ASCII punctuation, whitespace collapsed."""
    return " ".join(text.translate(str.maketrans("", "", string.punctuation)).split()) or text


def toggle_contractions(text: str, rng: Optional[random.Random] = None) -> str:
    """Contract ("do not" -> "don't") when the text has expansions, else expand its contractions."""
    for table in (_CONTRACTIONS, _EXPANSIONS):
        pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in table) + r")\b", re.IGNORECASE)
        changed = pattern.sub(lambda m: _match_case(m.group(0), table[m.group(0).lower()]), text)
        if changed != text:
            return changed
    return text


def _match_case(original: str, replacement: str) -> str:
    return replacement.capitalize() if original[:1].isupper() else replacement

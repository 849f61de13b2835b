"""Text perturbations (the robustness suite) and augmenters (the augment initiative).

A perturbation maps each text to one perturbed text; an augmenter maps each text to ``n`` variants.
Most operations are a few lines of plain Python here: word swaps and deletions, random characters,
WordNet synonyms and masked-LM substitution. nlpaug serves where it carries data of its own: its
keyboard-distance and OCR-confusion maps and its misspelling dictionary. Every operation is
seeded: each reseeds the global ``random`` and ``numpy`` generators (which nlpaug draws from) from
the seed and its own name before it runs. Only ``synonym`` reads WordNet; without it that
operation raises ``WordNetUnavailable`` and the others still run.
"""

from __future__ import annotations

import random
import re
import string
import zlib
from typing import Callable, Optional, Sequence

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from specs.augment import AUGMENTERS
from specs.robustness import PERTURBATIONS
from worker.ml.wordnet import WordNetUnavailable

__all__ = ["AUGMENTERS", "PERTURBATIONS", "WordNetUnavailable", "augment", "perturb"]
NEEDS_WORDNET = frozenset({"synonym"})  # the perturbations that read WordNet
WORD_P = 0.2  # the share of words a word or character operation touches
CHAR_P = 0.1  # the share of characters changed within a touched word
SYNONYM_P = 0.3

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
    rules = {"casing": recase, "punctuation": strip_punctuation, "contractions": toggle_contractions,
             "word_swap": swap_words, "word_delete": delete_words, "random_char": substitute_chars}
    if name in rules:
        rule = rules[name]
        return lambda texts: [rule(t, random.Random(random.random())) for t in texts]
    if name == "synonym":
        return _synonym_op()
    return _nlpaug_op(name)


def _nlpaug_op(name: str) -> Op:
    import nlpaug.augmenter.char as nac
    import nlpaug.augmenter.word as naw

    factories = {
        "keyboard": lambda: nac.KeyboardAug(aug_char_p=CHAR_P, aug_word_p=WORD_P),
        "ocr": lambda: nac.OcrAug(aug_char_p=CHAR_P, aug_word_p=WORD_P),
        "spelling": lambda: naw.SpellingAug(aug_p=WORD_P),
    }
    if name not in factories:
        raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    aug = factories[name]()

    def run(texts: list[str]) -> list[str]:
        # nlpaug returns a list for a list, but leaves texts it cannot change (one word, no
        # candidates) as they are; an empty result would misalign rows, so fall back to the input.
        out = aug.augment(texts) if texts else []
        return [o if isinstance(o, str) and o.strip() else t for o, t in zip(out, texts)]

    return run


def _chosen(count: int, rng: random.Random, share: float, eligible: Optional[Sequence[int]] = None) -> list[int]:
    """``share`` of the eligible positions (at least one, when there is any), in order."""
    pool = list(range(count)) if eligible is None else list(eligible)
    if not pool:
        return []
    return sorted(rng.sample(pool, max(1, round(share * len(pool)))))


def swap_words(text: str, rng: random.Random) -> str:
    """Swap about ``WORD_P`` of the words with their right-hand neighbour."""
    words = text.split()
    if len(words) < 2:
        return text
    for i in _chosen(len(words) - 1, rng, WORD_P):
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def delete_words(text: str, rng: random.Random) -> str:
    """Drop about ``WORD_P`` of the words, never all of them."""
    words = text.split()
    if len(words) < 2:
        return text
    gone = set(_chosen(len(words), rng, WORD_P)[: len(words) - 1])
    return " ".join(w for i, w in enumerate(words) if i not in gone)


def substitute_chars(text: str, rng: random.Random) -> str:
    """In about ``WORD_P`` of the words of 2+ characters, replace ``CHAR_P`` of the characters at random."""
    words = text.split()
    alphabet = string.ascii_letters + string.digits
    for i in _chosen(len(words), rng, WORD_P, [i for i, w in enumerate(words) if len(w) > 1]):
        chars = list(words[i])
        for j in _chosen(len(chars), rng, CHAR_P):
            chars[j] = rng.choice(alphabet.replace(chars[j], ""))
        words[i] = "".join(chars)
    return " ".join(words)


def _synonym_op() -> Op:
    """Replace about ``SYNONYM_P`` of the open-class words with a one-word WordNet synonym of the same part of speech."""
    from worker.ml import wordnet as wn

    wn.ensure_wordnet()  # WordNetUnavailable: the caller skips this operation
    from nltk.corpus import wordnet

    pos = {"NN": "n", "VB": "v", "JJ": "a", "RB": "r"}

    def options(word: str) -> list[str]:
        tag = pos.get(wn.wordnet_pos_tag(word))
        if tag is None:
            return []
        names = {lemma.name() for synset in wordnet.synsets(word.lower(), pos=tag) for lemma in synset.lemmas()}
        return sorted(n for n in names if n.isalpha() and n.lower() != word.lower())  # one word for one word

    def rule(text: str, rng: random.Random) -> str:
        words = text.split()
        found = {i: options(w) for i, w in enumerate(words)}
        for i in _chosen(len(words), rng, SYNONYM_P, [i for i, o in found.items() if o]):
            words[i] = _match_case(words[i], rng.choice(found[i]))
        return " ".join(words)

    return lambda texts: [rule(t, random.Random(random.random())) for t in texts]


def _contextual_op(mlm_path: str) -> Op:
    """Masked-LM substitution: mask about ``WORD_P`` of the words, fill each from the model's top 5
    whole-word guesses (never the original word)."""
    from worker.ml.modeling import pick_device

    device = pick_device()
    tokenizer = AutoTokenizer.from_pretrained(mlm_path)
    model = AutoModelForMaskedLM.from_pretrained(mlm_path, use_safetensors=True).to(device).eval()

    def fill(text: str) -> str:
        words = text.split()
        chosen = _chosen(len(words), random, WORD_P, [i for i, w in enumerate(words) if w.isalpha()])
        if not chosen:
            return text
        masked = [tokenizer.mask_token if i in chosen else w for i, w in enumerate(words)]
        batch = tokenizer(" ".join(masked), return_tensors="pt", truncation=True, max_length=128).to(device)
        with torch.inference_mode():
            logits = model(**batch).logits[0]
        slots = (batch["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
        for i, slot in zip(chosen, slots):
            guesses = [tokenizer.convert_ids_to_tokens(t) for t in logits[slot].topk(20).indices.tolist()]
            guesses = [g for g in guesses if g.isalpha() and g.lower() != words[i].lower()][:5]
            if guesses:
                words[i] = _match_case(words[i], random.choice(guesses))
        return " ".join(words)

    return lambda texts: [fill(t) for t in texts]


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

"""Perturbations and augmenters are seeded, change the text, and keep one output per input."""

from __future__ import annotations

import os
import random

import pytest

from worker.ml import textops, wordnet

TEXTS = ["i do not want to transfer money to my savings account", "what is the exchange rate for euros", "hi"]


@pytest.mark.parametrize("name", textops.PERTURBATIONS)
def test_each_perturbation_is_reproducible_from_its_seed_and_keeps_rows_aligned(name):
    first = textops.perturb(name, TEXTS, seed=7)
    assert first == textops.perturb(name, TEXTS, seed=7)
    assert len(first) == len(TEXTS) and all(isinstance(t, str) and t for t in first)


@pytest.mark.parametrize("name", ["keyboard", "ocr", "random_char", "word_swap", "word_delete", "spelling", "synonym"])
def test_noise_perturbations_change_a_long_text(name):
    changed = [textops.perturb(name, TEXTS[:1], seed=s)[0] != TEXTS[0] for s in range(3)]
    assert any(changed)


def test_style_rules_recase_strip_punctuation_and_toggle_contractions():
    assert textops.strip_punctuation("what's up, doc?") == "whats up doc"
    assert textops.toggle_contractions("I do not know what is it") == "I don't know what's it"
    assert textops.toggle_contractions("I can't, it's late") == "I can not, it is late"
    assert textops.recase("book a flight", random.Random(0)) in {"BOOK A FLIGHT", "book a flight", "Book A Flight", "Book a flight"}


def test_augment_returns_n_variants_per_text():
    variants = textops.augment("word_noise", TEXTS, n=3, seed=1)
    assert [len(v) for v in variants] == [3, 3, 3]
    assert len(set(variants[0])) > 1  # the variants cycle through swap, delete and spelling


def test_contextual_augmentation_needs_a_masked_lm_and_runs_with_one(tiny_bert):
    with pytest.raises(ValueError, match="masked-LM path"):
        textops.augment("contextual", TEXTS, n=1)
    (variant,) = textops.augment("contextual", TEXTS[:1], n=1, mlm_path=str(tiny_bert))[0]
    assert variant != TEXTS[0] and len(variant.split()) == len(TEXTS[0].split())  # words substituted, none lost


def test_wordnet_tags_open_class_words_and_skips_function_words():
    wordnet.ensure_wordnet()
    tags = [wordnet.wordnet_pos_tag(t) for t in ["the", "money", "quickly", "xyzzy", "42"]]
    assert tags == ["DT", "NN", "RB", "UNK", "DT"]


def test_debian_wordnet_is_copied_not_linked_with_a_generated_lexnames(tmp_path, monkeypatch):
    if not wordnet.DEBIAN_WORDNET.is_dir():
        missing = "wordnet-base is not installed (apt-get install -y --no-install-recommends wordnet-base)"
        pytest.fail(missing) if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else pytest.skip(missing)
    import nltk

    # NLTK opens corpora only inside its data folders.
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path), *nltk.data.path])
    target = wordnet.install_debian_wordnet(tmp_path)
    assert not any(p.is_symlink() for p in target.iterdir())
    lexnames = (target / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[0] == "00\tadj.all\t3" and lexnames[44] == "44\tadj.ppl\t3"
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    wordnet.allow_wordnet_30()  # the version-map fix lets a 3.0 database without index.sense load
    with pytest.warns(UserWarning, match="multilingual"):  # no Open Multilingual Wordnet: English only
        reader = WordNetCorpusReader(str(target), None)
    assert reader.synsets("money")[0].lexname() == "noun.possession"


def test_word_operations_keep_or_drop_words_but_never_invent_them():
    text = "please move two hundred dollars from checking to savings today"
    for seed in range(20):
        rng = random.Random(seed)
        swapped, deleted = textops.swap_words(text, rng), textops.delete_words(text, rng)
        assert sorted(swapped.split()) == sorted(text.split()) and swapped != text
        assert 0 < len(deleted.split()) < len(text.split()) and set(deleted.split()) <= set(text.split())
    assert textops.delete_words("hi", random.Random(0)) == "hi" and textops.swap_words("hi", random.Random(0)) == "hi"


def test_random_characters_change_letters_inside_words_only():
    text = "what is the exchange rate for euros"
    for seed in range(20):
        noisy = textops.substitute_chars(text, random.Random(seed))
        assert noisy != text and [len(w) for w in noisy.split()] == [len(w) for w in text.split()]


def test_synonyms_come_from_wordnet_with_the_same_part_of_speech():
    wordnet.ensure_wordnet()
    from nltk.corpus import wordnet as wn

    text = "transfer money to my account"
    for seed in range(5):
        (changed,) = textops.perturb("synonym", [text], seed=seed)
        for old, new in zip(text.split(), changed.split()):
            if old != new:
                assert new.lower() in {l.name().replace("_", " ").lower() for s in wn.synsets(old) for l in s.lemmas()}
            assert old not in {"to", "my"} or old == new  # function words stay

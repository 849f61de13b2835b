"""Perturbations and augmenters are seeded, change the text, and keep one output per input."""

from __future__ import annotations

import os
import random

import pytest

from worker.ml import augment_compat, textops

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
    assert variant != TEXTS[0]  # nlpaug's BERT wrapper works under transformers 5 (token2id patch)


def test_wordnet_tags_open_class_words_and_skips_function_words():
    augment_compat.ensure_wordnet()
    tags = [augment_compat.wordnet_pos_tag(t) for t in ["the", "money", "quickly", "xyzzy", "42"]]
    assert tags == ["DT", "NN", "RB", "UNK", "DT"]


def test_debian_wordnet_is_copied_not_linked_with_a_generated_lexnames(tmp_path, monkeypatch):
    if not augment_compat.DEBIAN_WORDNET.is_dir():
        missing = "wordnet-base is not installed (apt-get install -y --no-install-recommends wordnet-base)"
        pytest.fail(missing) if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else pytest.skip(missing)
    import nltk

    # NLTK opens corpora only inside its data folders.
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path), *nltk.data.path])
    target = augment_compat.install_debian_wordnet(tmp_path)
    assert not any(p.is_symlink() for p in target.iterdir())
    lexnames = (target / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[0] == "00\tadj.all\t3" and lexnames[44] == "44\tadj.ppl\t3"
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    augment_compat.apply()  # the version-map patch lets a 3.0 database without index.sense load
    with pytest.warns(UserWarning, match="multilingual"):  # no Open Multilingual Wordnet: English only
        reader = WordNetCorpusReader(str(target), None)
    assert reader.synsets("money")[0].lexname() == "noun.possession"

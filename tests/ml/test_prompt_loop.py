"""The prompt loop: templates are checked, searched on validation only, tested once, and stop on budget."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from core.errors import InvalidInput
import specs
from worker.initiatives import prompt_loop
from worker.initiatives.prompt_loop import templates as prompting
from worker.initiatives.prompt_loop.search import CausalLM, CausalLMScorer, rung_sizes, successive_halving

# Small enough for seconds on 2 cores: 40 validation rows in rungs of 10, 20, 40.
SEARCH = {"rounds": 2, "candidates_per_round": 6, "minibatch": 10, "max_val": 40, "folds": 4, "top_k": 2,
          "batch_size": 128, "seed_templates": ["a request about {label}", "{label}"]}


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, clinc_subset) -> Path:
    """A random 1-layer GPT-2 whose byte-level BPE was trained on the subset, saved as safetensors."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from worker.ml.data import load_folder

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(load_folder(clinc_subset).train.texts, vocab_size=400, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=1, n_head=2, bos_token_id=eos, eos_token_id=eos)
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_job(tmp_path_factory, clinc_subset, tiny_gpt2, run_job):
    params = {**SEARCH, "dataset": str(clinc_subset), "scorer": "causal_lm", "scorer_model": str(tiny_gpt2), "lm_variants": 2}
    return run_job(tmp_path_factory.mktemp("prompt_loop"), "prompt_loop", params, [])


class CountingDataset:
    """A ``Dataset`` that notes how many metrics had been logged each time its test split was read."""

    def __init__(self, dataset, ctx) -> None:
        self._dataset, self._ctx, self.test_reads = dataset, ctx, []

    def __getattr__(self, name):
        if name == "test":
            self.test_reads.append(len(self._ctx.metrics))
        return getattr(self._dataset, name)


def test_a_tiny_gpt2_scores_generates_and_selects_templates_through_the_payload(gpt2_job):
    sizes = {m.slice for m in gpt2_job.values("candidate_accuracy")}
    assert sizes == {"n10", "n20", "n40"}
    candidates = json.loads(Path(gpt2_job.artifacts["candidates.json"]).read_text())["candidates"]
    assert len(candidates) == 2 + 2 * 6 and len({c["template"] for c in candidates}) == len(candidates)
    assert all(prompting.validate_template(c["template"]) == c["template"] for c in candidates)
    # Every candidate, LM-written or mutated, was scored on the first minibatch at least.
    assert {m.step for m in gpt2_job.values("candidate_accuracy") if m.slice == "n10"} == set(range(len(candidates)))
    assert gpt2_job.values("lm_generated")[0].value == 4


def test_the_top_k_are_saved_for_other_jobs_with_their_fold_spread_and_test_scores(gpt2_job):
    top = prompting.load_top_prompts(Path(gpt2_job.artifacts["top_prompts.json"]))
    assert len(top) == 2
    saved = json.loads(Path(gpt2_job.artifacts["top_prompts.json"]).read_text())
    assert saved["seed"]["template"] == "a request about {label}" and saved["seed"]["test_accuracy"] is not None
    assert all(len(p["fold_accuracy"]) == 4 and p["test_accuracy"] is not None for p in saved["prompts"])
    assert {m.slice for m in gpt2_job.values("val_fold_variance")} == {"seed", "top1", "top2"}
    assert {m.slice for m in gpt2_job.values("test_accuracy")} == {"seed", "top1", "top2"}
    tested = {m.slice: m.value for m in gpt2_job.values("test_accuracy")}
    assert gpt2_job.values("improvement")[0].value == pytest.approx(100 * (tested["top1"] - tested["seed"]))
    assert gpt2_job.values("improvement_se")[0].value >= 0
    # The standard rows: a paired bootstrap interval around it; accuracy is both the unit and the overall delta.
    improvement = gpt2_job.values("improvement")[0].value
    assert gpt2_job.values("improvement.ci_low")[0].value <= improvement <= gpt2_job.values("improvement.ci_high")[0].value
    assert gpt2_job.values("overall.accuracy_delta")[0].value == pytest.approx(improvement)
    assert gpt2_job.values("overall.macro_f1_delta") and gpt2_job.values("tradeoff")


def test_the_spread_of_all_candidate_scores_is_logged_on_the_first_rung(gpt2_job):
    spread = {m.name: m.value for m in gpt2_job.metrics if m.name.startswith("spread_")}
    assert set(spread) == {"spread_std", "spread_min", "spread_max", "spread_iqr"}
    assert 0 <= spread["spread_min"] <= spread["spread_max"] <= 1 and spread["spread_iqr"] >= 0
    assert gpt2_job.values("candidates_tried")[0].value == 14


def test_selection_reads_validation_only_and_the_test_split_once_at_the_end(monkeypatch, make_context, clinc_subset, tiny_bert):
    from worker.ml import data

    ctx = make_context("prompt_loop")
    loaded = []
    monkeypatch.setattr(data, "load_dataset", lambda *a, **kw: loaded.append(CountingDataset(data.load_folder(clinc_subset), ctx)) or loaded[0])
    # The embedding scorer, here with a tiny random BERT in place of MiniLM.
    prompt_loop.run(specs.parse_params("prompt_loop", {**SEARCH, "scorer_model": str(tiny_bert)}), ctx)

    assert len(loaded[0].test_reads) == 1
    assert loaded[0].test_reads[0] >= len(ctx.values("candidate_accuracy")) + len(ctx.values("val_fold_std"))
    assert ctx.values("improvement")


@pytest.mark.parametrize("template, reason", [
    ("", "empty"),
    ("   ", "empty"),
    ("a request about the label", "no {label}"),
    ("{label} from {foo}", "unknown field {foo}"),
    ("about {}", "unknown field {}"),
    ("about {label!r}", "unknown field {label!r}"),
    ("about {label}}", "stray or doubled brace"),
    ("about {{label}}", "stray or doubled brace"),
    ("{label or", "stray or doubled brace"),
    ("{label} vs {label}", "2 times"),
    ("a very long request " * 10 + "{label}", "characters long"),
])
def test_a_bad_template_is_rejected_with_a_one_line_reason(template, reason):
    with pytest.raises(InvalidInput) as raised:
        prompting.validate_template(template)
    assert reason in str(raised.value) and "\n" not in str(raised.value)


def test_seed_templates_are_checked_when_the_job_is_parsed():
    with pytest.raises(InvalidInput, match=r"seed_templates: template 'about \{foo\}' has unknown field"):
        specs.parse_params("prompt_loop", {"seed_templates": "about {foo}"})
    with pytest.raises(ValueError, match="no {label}"):
        prompt_loop.Params(seed_templates=("a request",))
    assert specs.parse_params("prompt_loop", {"seed_templates": "Query:  {label}"}).seed_templates == ("Query:  {label}",)


def test_the_loop_stops_cleanly_when_should_stop_turns_true_mid_search(make_context, clinc_subset, tiny_gpt2):
    params = specs.parse_params("prompt_loop", {**SEARCH, "dataset": str(clinc_subset), "scorer": "causal_lm",
                                                      "scorer_model": str(tiny_gpt2), "lm_variants": 0})
    ctx = make_context("prompt_loop", stop_after_steps=12)
    prompt_loop.run(params, ctx)

    scored = ctx.values("candidate_accuracy")
    assert 0 < len(scored) < 12 and ctx.values("stopped_early")[0].value == 1.0
    assert not ctx.values("test_accuracy") and not ctx.values("improvement")  # no more work once told to stop
    saved = json.loads(Path(ctx.artifacts["top_prompts.json"]).read_text())
    assert saved["stopped_early"] and saved["seed"]["template"] == "a request about {label}"


def test_the_search_ends_at_its_share_of_the_reservation_and_keeps_the_rest_for_the_test(make_context, clinc_subset, tiny_bert):
    # Given a context whose cost grows with each score: 100 per candidate score, of 2,000 reserved
    ctx = make_context("prompt_loop")
    ctx.cost_micros = lambda: 100 * len(ctx.values("candidate_accuracy"))
    ctx.reserved_micros = lambda: 2_000
    params = specs.parse_params("prompt_loop", {**SEARCH, "dataset": str(clinc_subset), "scorer_model": str(tiny_bert)})
    prompt_loop.run(params, ctx)

    # Then the search stops at 80% (16 scores) and the test pass still runs
    assert len(ctx.values("candidate_accuracy")) == 16
    assert ctx.values("stopped_early")[0].value == 0.0 and ctx.values("improvement")


def test_contextual_calibration_removes_the_prior_an_lm_has_for_a_label():
    class BiasedLM:
        """Likes "balance" after anything (+5); likes a label more (+2) when the input names it."""

        def ids(self, text):
            return [text]

        def label_logprobs(self, context, labels):
            return [5.0 * (label[0].strip() == "balance") + 2.0 * (label[0].strip() in context[0]) for label in labels]

    scorer = CausalLMScorer(BiasedLM(), ["balance", "transfer", "recipe"])
    texts = ["make a transfer now", "a recipe please", "my balance"]
    assert scorer.predict("about {label}", texts) == [1, 2, 0]
    assert scorer.scores("about {label}", texts, calibrated=False).argmax(1).tolist() == [0, 0, 0]


def test_label_scores_from_a_shared_context_cache_equal_whole_sequence_scores(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    # Given a tiny random GPT-2 with a word-level tokenizer, and labels of one to three words
    vocab = {w: i for i, w in enumerate("<eos> my card was lost where is it about a request balance transfer money".split())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>").save_pretrained(tmp_path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=16, n_layer=2, n_head=2)).save_pretrained(tmp_path)
    lm = CausalLM(str(tmp_path))
    context, labels = lm.ids("my card was lost where is it about"), [lm.ids(w) for w in ("balance", "transfer money", "a request balance")]

    # When each label is scored from the shared cache, and again as one whole sequence
    shared = lm.label_logprobs(context, labels)
    whole = []
    with torch.inference_mode():
        for label in labels:
            ids = torch.tensor([context + label])
            logprobs = lm.model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            whole.append(sum(float(logprobs[len(context) - 1 + i, t]) for i, t in enumerate(label)))

    # Then both agree
    assert shared == pytest.approx(whole, abs=1e-4)


def test_mutations_and_crossovers_keep_the_label_field_and_never_repeat():
    rng, seen = random.Random(0), {prompting.dedupe_key("a request about {label}")}
    found = prompting.propose(["a request about {label}", "Query: {label} please"], 30, rng, seen, max_chars=60)
    assert len(found) == 30 and len({prompting.dedupe_key(t) for t, _ in found}) == 30
    assert all(prompting.validate_template(t, max_chars=60) for t, _ in found)
    assert {origin for _, origin in found} >= {"insert", "reorder", "delete", "prefix", "punctuate"}
    assert prompting.crossover("Query: a {label}", "{label} please") == "Query: a {label} please"


def test_the_synonym_operator_uses_wordnet_and_is_skipped_without_it():
    assert prompting.mutate("a request about {label}", "synonym", random.Random(0), None) is None
    synonyms = prompting.wordnet_synonyms()
    if synonyms is None:
        pytest.skip("WordNet is not installed here")
    changed = prompting.mutate("a request about {label}", "synonym", random.Random(0), synonyms)
    assert changed != "a request about {label}" and changed.endswith("about {label}")


def test_an_lm_continuation_is_parsed_to_its_first_line_and_checked():
    seen: set[str] = set()
    assert prompting.parse_generated(' "a query about {label}"\nTemplate: x') == "a query about {label}"
    assert prompting.check_candidate("a query about {label}", seen, max_chars=60) == ("a query about {label}", "")
    assert prompting.check_candidate("A query about {label}.", seen, max_chars=60)[1] == "repeats an earlier template"
    assert "no {label}" in prompting.check_candidate("a query", seen, max_chars=60)[1]


def test_successive_halving_promotes_the_better_half_to_ever_larger_minibatches():
    assert rung_sizes(10, 40) == [10, 20, 40] and rung_sizes(64, 40) == [40]
    calls = []

    def score(template, size):
        calls.append((template, size))
        return float(template)

    survivors, stopped = successive_halving(["1", "4", "2", "3"], [10, 20, 40], score, lambda: False)
    assert survivors == ["4"] and not stopped
    assert [size for _, size in calls] == [10] * 4 + [20] * 2 + [40]


def test_the_prompt_loop_runs_through_the_real_worker_and_settles_its_top_prompts(embedded, clinc_subset, tiny_gpt2):
    params = {**SEARCH, "rounds": 1, "dataset": str(clinc_subset), "scorer": "causal_lm",
              "scorer_model": str(tiny_gpt2), "lm_variants": 1}
    embedded.vars["OMP_NUM_THREADS"] = "1"
    embedded.ok("budget", "create", "b", "--total", "1.00")
    args = [f"--param=seed_templates={'|'.join(params.pop('seed_templates'))}".replace("|", ",")]
    args += [f"--param={k}={v}" for k, v in params.items()]
    job_id = json.loads(embedded.ok("submit", "prompt_loop", "--budget", "b", "--estimate", "0.10", "--json", *args).stdout)["id"]
    embedded.burst(timeout=300)
    done = json.loads(embedded.ok("results", "--job", job_id, "--json").stdout)
    assert done["job"]["status"] == "succeeded" and 0 < done["job"]["charged_micros"] <= 100_000
    assert {a["name"] for a in done["artifacts"]} >= {"top_prompts.json", "candidates.json"}
    top = prompting.load_top_prompts(Path(next(a["uri"] for a in done["artifacts"] if a["name"] == "top_prompts.json")))
    assert len(top) == 2
    assert "improvement" in {m["name"] for m in done["metrics"]}

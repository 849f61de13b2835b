"""prompt_loop: search zero-shot prompt templates on validation, report the best on test.

A template such as ``"a request about {label}"`` renders every label; an input goes to the label
whose rendering scores best (embedding similarity or calibrated causal-LM likelihood, see
``worker.initiatives.prompt_loop.search``). Each round proposes new templates, evolution-style: a causal LM
rewrites the best ones from a meta-prompt (APE, Zhou et al. 2023), and mutation and crossover fill
the rest. Successive halving scores them on a growing slice of the validation split. The top-k are
scored once on the test split, which selection never sees, beside the first seed template.
``improvement`` is the best template's test accuracy minus the seed's, in points.

Other jobs and users load the ranked templates from the ``top_prompts.json`` artifact with
``worker.initiatives.prompt_loop.templates.load_top_prompts``; ``candidates.json`` holds every template tried and its scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.errors import PermanentError
from specs.prompt_loop import Params


@dataclass
class Candidate:
    index: int
    template: str
    origin: str  # seed, lm, crossover, or a mutation operator
    round: int
    scores: dict[int, float] = field(default_factory=dict)  # validation rows -> accuracy

    @property
    def id(self) -> str:
        return f"c{self.index:03d}"


def run(params: Params, ctx) -> None:
    import random

    from worker.ml.data import load_dataset, note_val_carved
    from worker.initiatives.prompt_loop.search import CausalLM, Evaluator, build_scorer, rung_sizes

    dataset = load_dataset(params.dataset, variant=params.variant, slice_column=params.slice_column, seed=params.seed)
    note_val_carved(ctx, dataset)
    texts, gold = _validation_rows(dataset, params)
    scorer, scorer_lm = build_scorer(params.scorer, params.scorer_model, dataset.labels,
                                     batch_size=params.batch_size, max_length=params.max_length)
    generator = CausalLM(params.generator_model) if params.generator_model else scorer_lm
    if generator is not None:
        torch.manual_seed(params.seed)  # the LM samples from torch's global generator
    search = Search(params, ctx, Evaluator(scorer, texts, gold), rung_sizes(params.minibatch, len(texts)))
    search.add_seeds()
    rng, synonyms = random.Random(params.seed), _synonyms(params)
    for round_no in range(1, params.rounds + 1):
        if search.search_over():
            break
        search.run_round(round_no, search.propose(round_no, rng, generator, synonyms))
    top = search.ranked()[: params.top_k]
    search.log_spread()
    folds = search.log_folds(top)
    # A spent reservation, a cancel or a lost lease: keep what was measured, spend nothing more.
    tested = {} if search.stopped else _test(ctx, dataset, scorer, search.candidates[0], top, bootstrap_seed=params.seed)
    _save(ctx, params, search, top, folds, tested)


def _validation_rows(dataset, params: Params) -> tuple[list[str], list[int]]:
    """The validation rows in a seeded random order (a prefix is then a fair minibatch), capped."""
    import random

    index = {label: i for i, label in enumerate(dataset.labels)}
    order = list(range(len(dataset.val)))
    random.Random(params.seed).shuffle(order)
    order = order[: params.max_val or None]
    if len(order) < params.folds:
        # The data, not the request, is short of rows: another attempt would read the same rows.
        raise PermanentError(f"{dataset.name}: {len(order)} validation rows, fewer than folds={params.folds}")
    return [dataset.val.texts[i] for i in order], [index[dataset.val.labels[i]] for i in order]


def _synonyms(params: Params):
    from worker.initiatives.prompt_loop.templates import wordnet_synonyms

    # Without WordNet the synonym operator is simply left out; the others do not need it.
    return wordnet_synonyms() if params.use_wordnet else None


class Search:
    """The candidates so far, their validation scores, and the budget checks between them."""

    def __init__(self, params: Params, ctx, evaluator, sizes: list[int]) -> None:
        self.params, self.ctx, self.evaluator, self.sizes = params, ctx, evaluator, sizes
        self.candidates: list[Candidate] = []
        self.seen: set[str] = set()
        self.rejected: list[dict[str, str]] = []
        self.generated = 0
        self.stopped = False

    def hard_stop(self) -> bool:
        """True (and sticky) once the job must stop: reservation spent, cancelled, or lease lost."""
        self.stopped = self.stopped or self.ctx.should_stop()
        return self.stopped

    def search_over(self) -> bool:
        """True once the search has used its share of the reservation (or must stop outright)."""
        spent = self.ctx.cost_micros() >= self.params.search_share * self.ctx.reserved_micros()
        return self.hard_stop() or spent

    def add_seeds(self) -> None:
        """Score every seed template at every rung: the seed's full score is the baseline to beat."""
        from worker.initiatives.prompt_loop.templates import check_candidate

        for text in self.params.seed_templates:
            template, _ = check_candidate(text, self.seen, max_chars=self.params.max_chars)
            if template:  # a seed repeating another seed is scored once
                self._add(template, "seed", 0)
        for candidate in self.candidates:
            for size in self.sizes:
                if self.search_over():
                    return
                self.score(candidate.template, size)

    def propose(self, round_no: int, rng, generator, synonyms) -> list[Candidate]:
        """This round's new candidates: LM rewrites of the best templates, then mutations and crossovers."""
        from worker.initiatives.prompt_loop.templates import propose

        parents = [c.template for c in self.ranked()[: self.params.parents]] or [self.candidates[0].template]
        wanted = self.params.candidates_per_round
        new = self._rewrites(parents, min(self.params.lm_variants, wanted), generator) if generator else []
        found = propose(parents, wanted - len(new), rng, self.seen, max_chars=self.params.max_chars, synonyms=synonyms)
        return [self._add(t, origin, round_no) for t, origin in new + found]

    def _rewrites(self, parents: list[str], n: int, generator) -> list[tuple[str, str]]:
        from worker.initiatives.prompt_loop.templates import check_candidate, meta_prompt, parse_generated

        accepted = []
        for i in range(n):
            if self.search_over():  # sampling from a large LM takes a while: check between samples
                break
            raw = generator.generate(meta_prompt(parents[i % len(parents)]), 1, temperature=self.params.temperature)[0]
            self.generated += 1
            template, reason = check_candidate(parse_generated(raw), self.seen, max_chars=self.params.max_chars)
            if template:
                accepted.append((template, "lm"))
            else:
                self.rejected.append({"text": raw[:200], "reason": reason})
        return accepted

    def _add(self, template: str, origin: str, round_no: int) -> Candidate:
        candidate = Candidate(len(self.candidates), template, origin, round_no)
        self.candidates.append(candidate)
        return candidate

    def run_round(self, round_no: int, new: list[Candidate]) -> None:
        """Successive halving over this round's candidates."""
        from worker.initiatives.prompt_loop.search import successive_halving

        _, stopped = successive_halving([c.template for c in new], self.sizes, self.score, self.search_over)
        self.ctx.log_metric("round_candidates", len(new), step=round_no)
        if not stopped:
            self.ctx.log_metric("rounds_completed", round_no)

    def score(self, template: str, size: int) -> float:
        """Validation accuracy on ``size`` rows, logged against the candidate's index."""
        candidate = next(c for c in reversed(self.candidates) if c.template == template)
        accuracy = self.evaluator.accuracy(template, size)
        candidate.scores[size] = accuracy
        # The slice names the minibatch size: scores on different sizes are not comparable.
        self.ctx.log_metric("candidate_accuracy", accuracy, slice=f"n{size}", step=candidate.index)
        return accuracy

    def ranked(self) -> list[Candidate]:
        """Candidates scored on the whole validation subset, best first (earlier first on ties)."""
        full = [c for c in self.candidates if self.sizes[-1] in c.scores]
        return sorted(full, key=lambda c: -c.scores[self.sizes[-1]])

    def log_spread(self) -> None:
        """Spread of every candidate's first-rung score: all of them were scored on those same rows."""
        import numpy as np

        first = np.array([c.scores[self.sizes[0]] for c in self.candidates if self.sizes[0] in c.scores])
        self.ctx.log_metric("candidates_tried", len(first))
        self.ctx.log_metric("lm_generated", self.generated)
        self.ctx.log_metric("lm_rejected", len(self.rejected))
        if len(first):
            q1, q3 = np.percentile(first, [25, 75])
            for name, value in (("std", first.std()), ("min", first.min()), ("max", first.max()), ("iqr", q3 - q1)):
                self.ctx.log_metric(f"spread_{name}", float(value), slice=f"n{self.sizes[0]}")

    def log_folds(self, top: list[Candidate]) -> dict[int, list[float]]:
        """Accuracy of the seed and the top-k on ``folds`` disjoint validation folds: mean, variance, std."""
        import numpy as np

        folds = {}
        for name, candidate in _named(self.candidates[0], top):
            if self.sizes[-1] not in candidate.scores:
                continue  # a seed the budget stopped before the last rung
            correct = np.array(self.evaluator.correct(candidate.template, self.sizes[-1]), dtype=float)
            folds[candidate.index] = [float(part.mean()) for part in np.array_split(correct, self.params.folds)]
            self.ctx.log_metric("val_accuracy", float(correct.mean()), slice=name, step=candidate.index)
            self.ctx.log_metric("val_fold_variance", float(np.var(folds[candidate.index])), slice=name)
            self.ctx.log_metric("val_fold_std", float(np.std(folds[candidate.index])), slice=name)
        return folds


def _named(seed: Candidate, top: list[Candidate]) -> list[tuple[str, Candidate]]:
    """("seed", the first seed) and ("top1", the best) onwards: the slices results are reported under."""
    return [("seed", seed)] + [(f"top{rank}", c) for rank, c in enumerate(top, start=1)]


def _test(ctx, dataset, scorer, seed: Candidate, top: list[Candidate], *, bootstrap_seed: int) -> dict[int, float]:
    """Test accuracy of the seed and the top-k: the only read of the test split.

    ``improvement`` (best minus seed, points) comes with its paired bootstrap interval and the
    overall deltas of ``comparison_rows``; ``improvement_se`` is the paired standard error.
    """
    import numpy as np

    from worker.ml.evaluate import accuracy, comparison_rows, log_rows

    test = dataset.test
    gold = np.array(dataset.label_ids(test))
    unique = {c.index: c for _, c in _named(seed, top)}  # the seed may be among the top-k: score it once
    predicted = {index: np.array(scorer.predict(c.template, test.texts)) for index, c in unique.items()}
    correct = {index: p == gold for index, p in predicted.items()}
    for name, candidate in _named(seed, top):
        ctx.log_metric("test_accuracy", float(correct[candidate.index].mean()), slice=name, step=candidate.index)
    if top:
        log_rows(ctx, comparison_rows(gold, predicted[seed.index], predicted[top[0].index], metric=accuracy,
                                      seed=bootstrap_seed))
        # Paired on the same queries: the standard error of the mean per-query difference.
        diff = correct[top[0].index].astype(float) - correct[seed.index]
        ctx.log_metric("improvement_se", 100 * float(diff.std(ddof=1) / np.sqrt(len(diff))))
    return {index: float(c.mean()) for index, c in correct.items()}


def _save(ctx, params: Params, search: Search, top: list[Candidate], folds: dict, tested: dict) -> None:
    """``candidates.json`` (everything tried) and ``top_prompts.json`` (what other jobs load)."""
    import json

    from worker.initiatives.prompt_loop.templates import save_top_prompts

    def entry(c: Candidate) -> dict:
        return {"id": c.id, "template": c.template, "origin": c.origin, "round": c.round,
                "val_accuracy": c.scores.get(search.sizes[-1]), "val_rows": search.sizes[-1],
                "fold_accuracy": folds.get(c.index), "test_accuracy": tested.get(c.index)}

    ctx.log_metric("stopped_early", float(search.stopped))
    path = ctx.work_dir / "candidates.json"
    rows = [{**entry(c), "scores": {str(n): a for n, a in c.scores.items()}} for c in search.candidates]
    path.write_text(json.dumps({"rung_sizes": search.sizes, "candidates": rows, "rejected": search.rejected[:200]}, indent=2))
    ctx.save_artifact("candidates.json", path)
    about = {"scorer": params.scorer, "scorer_model": params.scorer_model, "dataset": params.dataset,
             "variant": params.variant, "max_chars": params.max_chars, "seed": entry(search.candidates[0]),
             "stopped_early": search.stopped}
    prompts = [{"rank": rank, **entry(c)} for rank, c in enumerate(top, start=1)]
    ctx.save_artifact("top_prompts.json", save_top_prompts(ctx.work_dir / "top_prompts.json", prompts, **about))

"""On a GPU the loop trains under autocast, resumes exactly, times its phases, and serving is timed
there apart from the CPU. Every test here needs CUDA and skips without it (CI and the dev machine
have none; run them on a GPU worker)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from core.errors import BudgetStop  # noqa: E402
from worker.ml.data import load_folder  # noqa: E402
from worker.ml.modeling import Pretokenized, encode, load_classifier  # noqa: E402
from worker.ml.phases import Phases  # noqa: E402
from worker.ml.train import TrainConfig, seed_everything, train  # noqa: E402

CONFIG = TrainConfig(steps=12, batch_size=16, grad_accum=2, lr=5e-3, warmup_ratio=0.25, checkpoint_every=5, seed=3)


@pytest.fixture(scope="module")
def dataset(clinc_subset):
    return load_folder(clinc_subset)


def fit(make_context, tiny_bert, dataset, job_id, **context):
    seed_everything(CONFIG.seed)
    model, tokenizer = load_classifier(str(tiny_bert), dataset.labels)
    ctx, phases = make_context("baseline", job_id=job_id, **context), Phases()
    try:
        return ctx, train(model, tokenizer, dataset.train.texts, dataset.label_ids(dataset.train), CONFIG, ctx, phases=phases), phases
    except BudgetStop as stop:
        return ctx, stop, phases


def losses(ctx) -> dict[int, float]:
    return {m.step: m.value for m in ctx.values("train.loss")}


def test_a_run_stopped_on_the_gpu_resumes_on_the_gpu_with_the_same_loss_curve(make_context, tiny_bert, dataset):
    reference, done, phases = fit(make_context, tiny_bert, dataset, "reference")
    assert done.step == 12 and phases.samples == 12 * 2 * 16 and phases.seconds["train"] > 0
    first, stop, _ = fit(make_context, tiny_bert, dataset, "job", stop_after_steps=7)
    assert isinstance(stop, BudgetStop)
    second, resumed, _ = fit(make_context, tiny_bert, dataset, "job", attempt=2)
    assert resumed.resumed_from == 7
    # bf16 autocast is deterministic enough run to run on one GPU for the curve to match closely.
    assert {**losses(first), **losses(second)} == pytest.approx(losses(reference), rel=1e-2)


def test_a_batch_cut_on_the_gpu_equals_the_batch_tokenized_alone(tiny_bert, dataset):
    _, tokenizer = load_classifier(str(tiny_bert), dataset.labels)
    tokens = Pretokenized(tokenizer, dataset.train.texts, max_length=64, device="cuda")
    indices = [3, 1, 4, 15, 9, 26]
    alone = encode(tokenizer, [dataset.train.texts[i] for i in indices], max_length=64, device="cuda")
    assert all(torch.equal(tokens.batch(indices)[k], alone[k]) for k in alone)


def test_serving_on_the_gpu_gives_the_cpu_logits(tiny_bert, dataset):
    import copy

    from worker.initiatives.distill.serving import TorchPredictor

    model, tokenizer = load_classifier(str(tiny_bert), dataset.labels)
    texts = list(dataset.test.texts[:32])
    cpu = TorchPredictor(copy.deepcopy(model), tokenizer)(texts)
    gpu = TorchPredictor(model, tokenizer, device="cuda")(texts)
    assert gpu == pytest.approx(cpu, abs=1e-3)

"""The student's layer map and the intermediate distillation losses, on a tiny 4-layer BERT teacher."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, clinc_subset):
    """A random 4-layer tiny BERT classifier: enough layers for the maps to differ.

    Its encoder matrices are drawn wider than BERT's init (std 0.2, not 0.02), so each layer changes
    the hidden states and sharpens attention: the targets of different layers are far apart.
    """
    from worker.ml.data import load_folder
    from worker.ml.modeling import build_tiny_bert, load_classifier

    dataset = load_folder(clinc_subset)
    folder = build_tiny_bert(dataset.train.texts, tmp_path_factory.mktemp("teacher4"), hidden=32, layers=4, vocab_size=400)
    torch.manual_seed(0)
    model, tokenizer = load_classifier(str(folder), dataset.labels)
    with torch.no_grad():
        for weight in model.base_model.encoder.parameters():
            if weight.ndim == 2:
                weight.normal_(0, 0.2)
    return model.eval(), tokenizer, dataset


@pytest.mark.parametrize("how, six_to_three, six_to_two", [
    ("uniform", [1, 3, 5], [2, 5]),
    ("ends", [0, 3, 5], [0, 5]),
    ("bottom", [0, 1, 2], [0, 1]),
])
def test_each_layer_map_names_the_teacher_layers_it_claims(how, six_to_three, six_to_two):
    from worker.initiatives.distill.student import teacher_layers

    assert teacher_layers(6, 3, how) == six_to_three and teacher_layers(6, 2, how) == six_to_two


@pytest.mark.parametrize("how", ["uniform", "ends", "bottom"])
def test_the_student_copies_the_mapped_teacher_layers_and_the_kept_embedding_rows(tiny_teacher, how):
    from worker.initiatives.distill.student import build_student, teacher_layers

    teacher, tokenizer, dataset = tiny_teacher
    student = build_student(teacher, tokenizer, layers=2, corpus=dataset.train.texts, layer_map=how)
    assert list(student.layers) == teacher_layers(4, 2, how)
    t_layers, s_layers = teacher.base_model.encoder.layer, student.model.base_model.encoder.layer
    for i, source in enumerate(student.layers):
        for (name, mine), (_, theirs) in zip(s_layers[i].state_dict().items(), t_layers[source].state_dict().items()):
            assert torch.equal(mine, theirs), f"student layer {i} {name} is not teacher layer {source}'s"
    embeddings = teacher.base_model.embeddings.word_embeddings.weight
    assert torch.equal(student.model.base_model.embeddings.word_embeddings.weight, embeddings[student.teacher_ids])


def test_the_teacher_sees_the_very_tokens_the_pruned_student_sees(tiny_teacher):
    from worker.initiatives.distill.student import build_student

    teacher, tokenizer, dataset = tiny_teacher
    student = build_student(teacher, tokenizer, layers=2, corpus=dataset.train.texts)
    texts = list(dataset.train.texts)
    mine = student.tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(student.teacher_ids[mine], tokenizer(texts, padding=True, return_tensors="pt")["input_ids"])


def test_relations_ignore_padding_and_vanish_only_when_equal():
    from worker.initiatives.distill.student import relation_kl

    torch.manual_seed(0)
    q, k = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert relation_kl(q, k, q, k, mask, heads=2).item() == pytest.approx(0, abs=1e-6)
    baseline = relation_kl(q, k, q * 0.5, k, mask, heads=2)
    assert baseline.item() > 0
    noisy_q, noisy_k = q.clone(), k.clone()
    noisy_q[1, 3:] += 10  # padded query rows and padded keys: nothing they hold may count
    noisy_k[1, 3:] -= 10
    assert relation_kl(noisy_q, noisy_k, q * 0.5, k, mask, heads=2).item() == pytest.approx(baseline.item(), rel=1e-5)


def _terms(student, teacher, targets, batch) -> dict[str, float]:
    from worker.initiatives.distill.student import DistillLoss, LossWeights

    probe = DistillLoss(teacher, LossWeights(hidden=1, attention=1, value=1), targets=targets, teacher_ids=student.teacher_ids)
    student.model.eval()
    with torch.no_grad():
        probe(student.model, batch, torch.zeros(len(batch["input_ids"]), dtype=torch.long), [])
    return probe.last_terms


@pytest.mark.parametrize("term", ["hidden", "attention", "value"])
def test_an_intermediate_loss_moves_the_student_toward_the_teachers_mapped_layers(tiny_teacher, make_context, term):
    """Given a student initialised from the bottom layers but targeted at the uniform map, when it
    trains with one intermediate term on, then that term falls, and further than in a control that
    trains the same steps on the logits alone."""
    from worker.initiatives.distill.student import DistillLoss, LossWeights, build_student, teacher_layers
    from worker.ml.modeling import encode
    from worker.ml.train import TrainConfig, train

    teacher, tokenizer, dataset = tiny_teacher
    targets = teacher_layers(4, 2, "uniform")  # [1, 3]: not the layers the bottom map copied
    labels = dataset.label_ids(dataset.train)
    after = {}
    for arm, weight in (("on", 1.0), ("control", 0.0)):
        torch.manual_seed(0)
        student = build_student(teacher, tokenizer, layers=2, corpus=dataset.train.texts, layer_map="bottom")
        probe = encode(student.tokenizer, list(dataset.val.texts[:64]), max_length=64, device="cpu")
        before = _terms(student, teacher, targets, probe)[term]
        weights = LossWeights(alpha=0.5, **{term: weight})
        loss_fn = DistillLoss(teacher, weights, targets=targets, teacher_ids=student.teacher_ids)
        cfg = TrainConfig(steps=20, batch_size=16, lr=3e-3, warmup_ratio=0.0, checkpoint_every=100)
        train(student.model, student.tokenizer, dataset.train.texts, labels, cfg, make_context("distill"), run=f"{term}-{arm}",
              loss_fn=loss_fn)
        after[arm] = _terms(student, teacher, targets, probe)[term]
        if arm == "on":
            assert after[arm] < 0.7 * before, f"{term}: {before:.4f} -> {after[arm]:.4f}"
    assert after["on"] < after["control"]


def test_the_loss_hook_runs_the_forward_pass_itself(tiny_teacher, make_context):
    # train() hands the hook the model and the encoded batch; the hook decides what the forward returns.
    import copy

    from worker.ml.train import TrainConfig, train

    teacher, tokenizer, dataset = tiny_teacher
    model, seen = copy.deepcopy(teacher), []

    def loss_fn(m, batch, labels, indices):
        seen.append((m is model, sorted(batch), len(labels), len(indices)))
        return m(**batch, labels=labels).loss

    cfg = TrainConfig(steps=2, batch_size=8, lr=1e-4, checkpoint_every=100)
    train(model, tokenizer, dataset.train.texts, dataset.label_ids(dataset.train), cfg, make_context("baseline"),
          run="hook", loss_fn=loss_fn)
    assert seen == [(True, ["attention_mask", "input_ids", "token_type_ids"], 8, 8)] * 2


@pytest.mark.parametrize("raw, problem", [
    ({"layer_map": "middle"}, "layer_map"),
    ({"attention_layers": "first"}, "attention_layers"),
    ({"hidden_weight": -1}, "hidden_weight"),
    ({"value_weight": float("nan")}, "value_weight"),
    ({"epochs": 0}, "epochs"),
    ({"serving_batch": 0}, "serving_batch"),
])
def test_bad_distill_params_are_refused_naming_the_field(raw, problem):
    import specs
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput, match=problem):
        specs.parse_params("distill", raw)

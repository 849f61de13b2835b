"""Which model a job works on, and which data that model was trained on.

A model artifact is a folder written by ``save_model``: safetensors weights, config, tokenizer,
``labels.json`` and ``dataset.json`` (how to load the data it was trained on), so a later job needs
only the job id that produced it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from core.errors import PermanentError
from worker.context import PriorResult

DATASET_FILE = "dataset.json"
MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class DataSpec:
    source: str = "clinc150"
    variant: str = "full"
    slice_column: str = "domain"
    seed: int = 0

    def load(self):
        """The ``Dataset`` this spec names."""
        from worker.ml.data import load_dataset

        return load_dataset(self.source, variant=self.variant, slice_column=self.slice_column, seed=self.seed)

    @classmethod
    def of(cls, params: Any, ctx: Any) -> tuple["DataSpec", Any]:
        """The spec a training payload's ``params`` name and its ``Dataset``, with a note on the job when
        the validation split had to be carved from train."""
        from worker.ml.data import note_val_carved

        spec = cls(params.dataset, params.variant, params.slice_column, params.seed)
        dataset = spec.load()
        note_val_carved(ctx, dataset)
        return spec, dataset


def save_model(model: Any, tokenizer: Any, labels: Sequence[str], spec: DataSpec, folder: Path) -> Path:
    """Write a model artifact folder: the classifier plus the spec of its training data."""
    from worker.ml.modeling import save_classifier

    save_classifier(model, tokenizer, labels, folder)
    (folder / DATASET_FILE).write_text(json.dumps(asdict(spec)))
    return folder


def model_source(ctx: Any, model_job: str) -> PriorResult:
    """The settled job whose model to use: the one admission resolved into ``model_job``.

    Lineage is by declaration (the job's ``model_job``, or the model among its ``after:``), settled
    at admission; a job never falls back to another budget's or another plan's latest result.
    """
    if not model_job:
        raise PermanentError("no model_job: this job was admitted without a model source; resubmit it --after the job that stores the model")
    prior = ctx.prior(model_job)
    if prior.status != "succeeded":
        raise PermanentError(f"model_job {model_job} is {prior.status}; it must succeed first")
    if MODEL_ARTIFACT not in prior.artifacts:
        raise PermanentError(f"job {prior.job_id} ({prior.initiative}) stored no {MODEL_ARTIFACT!r} artifact")
    return prior


def load_model(prior: PriorResult, ctx: Any) -> tuple[Any, Any, DataSpec, Any]:
    """(model, tokenizer, data spec, dataset) for the model artifact of ``prior``, fetched through ``ctx``
    (downloaded from the artifact store if need be, its sha256 checked). Like ``DataSpec.of``, it notes
    on the job when the validation split had to be carved from train."""
    from worker.ml.data import note_val_carved
    from worker.ml.modeling import load_saved

    folder = ctx.fetch_artifact(prior, MODEL_ARTIFACT)
    model, tokenizer, labels = load_saved(folder)
    spec = DataSpec(**json.loads((folder / DATASET_FILE).read_text()))
    dataset = spec.load()
    if tuple(dataset.labels) != tuple(labels):
        raise PermanentError(f"{folder}: the model's labels differ from those of its dataset {spec.source!r}")
    note_val_carved(ctx, dataset)
    return model, tokenizer, spec, dataset


def report_for(ctx: Any, initiative: str, model_job: str) -> Optional[PriorResult]:
    """The ``initiative`` job among this job's dependencies that evaluated ``model_job``'s model, if any."""
    found = [d for d in ctx.dependencies() if d.initiative == initiative and d.params.get("model_job") == model_job]
    return found[-1] if found else None

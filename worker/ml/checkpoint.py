"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a folder ``step-000120/`` holding the model weights, the optimizer's tensors,
the RNG states and ``state.json`` (step, optimizer hyperparameters, scheduler, grad scaler, Python
and NumPy RNG), plus whatever the loop adds: JSON under ``extra`` and tensors in ``extra.safetensors``
(early stopping's state and best weights). It is written under a temporary name and renamed, so a preempted write never
leaves a half checkpoint that a resumed attempt would trust.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch

_NAME = re.compile(r"^step-(\d+)$")


def latest_checkpoint(folder: Path) -> Optional[Path]:
    """The complete checkpoint with the highest step under ``folder``, if any."""
    found = [(int(m.group(1)), p) for p in folder.glob("step-*") if (m := _NAME.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def save_checkpoint(folder: Path, step: int, *, model: Any, optimizer: Any, scheduler: Any, scaler: Any, keep: int = 2,
                    extra: Optional[dict[str, Any]] = None, tensors: Optional[dict[str, Any]] = None,
                    also: Optional[Callable[[Path], None]] = None) -> Path:
    """Write the full training state at ``step`` and drop all but the ``keep`` newest checkpoints.

    ``extra`` (JSON-able) and ``tensors`` (name -> tensor) travel with it; ``load_extra`` reads them back.
    ``also(folder)`` writes a caller's own files into the checkpoint before it is complete.
    """
    from safetensors.torch import save_file, save_model

    final = folder / f"step-{step:06d}"
    partial = folder / f"step-{step:06d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_model(model, str(partial / "model.safetensors"))  # handles tied weights, unlike save_file
    optim_tensors, optim_json = _split_optimizer_state(optimizer.state_dict())
    save_file(optim_tensors, str(partial / "optimizer.safetensors"))
    save_file(_torch_rng_state(), str(partial / "rng.safetensors"))
    if tensors:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial / "extra.safetensors"))
    state = {
        "step": step,
        "optimizer": optim_json,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "python_rng": _python_rng_state(),
        "numpy_rng": _numpy_rng_state(),
        "extra": extra or {},
    }
    if also is not None:
        also(partial)
    (partial / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    _prune(folder, keep)
    return final


def load_checkpoint(path: Path, *, model: Any, optimizer: Any, scheduler: Any, scaler: Any) -> int:
    """Restore everything ``save_checkpoint`` wrote into the given objects; return the step."""
    from safetensors.torch import load_file, load_model

    state = json.loads((path / "state.json").read_text())
    load_model(model, str(path / "model.safetensors"))
    tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    _restore_rng(load_file(str(path / "rng.safetensors")), state)
    return int(state["step"])


def load_extra(path: Path) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """(extra JSON, extra tensors or None) saved with the checkpoint at ``path``."""
    from safetensors.torch import load_file

    extra = json.loads((path / "state.json").read_text()).get("extra", {})
    tensors = path / "extra.safetensors"
    return extra, (load_file(str(tensors)) if tensors.is_file() else None)


def _split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensors as ``"<param index>.<name>"`` for safetensors; the rest (hyperparameters) as JSON."""
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *saved["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    # JSON turned tuples (AdamW's betas) into lists; give them back their type.
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in saved["param_groups"]]
    return {"state": state, "param_groups": groups}


def _torch_rng_state() -> dict[str, Any]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng_state() -> list[Any]:
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), pos, has_gauss, cached]


def _restore_rng(tensors: dict[str, Any], state: dict[str, Any]) -> None:
    import numpy as np
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda")), key=lambda k: int(k[4:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _prune(folder: Path, keep: int) -> None:
    found = sorted((int(m.group(1)), p) for p in folder.glob("step-*") if (m := _NAME.match(p.name)))
    for _, old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)

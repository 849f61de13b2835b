"""The initiative registry: one module per initiative, none of them importing Celery.

Each module defines, at the top, a frozen dataclass ``Params`` (its settings, every field with a
default) and a function ``run(params: Params, ctx: JobContext) -> None``. Heavy imports (torch,
transformers) happen inside ``run`` or in the shared ML modules it imports there, so the producer
can validate a job's parameters without importing torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from models.errors import ConfigError, InvalidInput

# name -> module. A new initiative is one line here and one module beside this file.
REGISTRY: dict[str, str] = {
    "calibrate": "worker.initiatives.calibrate",
    "baseline": "worker.initiatives.baseline",
    "robustness": "worker.initiatives.robustness",
    "augment": "worker.initiatives.augment",
    "prompt_loop": "worker.initiatives.prompt_loop",
    "curriculum": "worker.initiatives.curriculum",
    "distill": "worker.initiatives.distill",
}




def _extra_initiatives(raw: str) -> dict[str, str]:
    """``BUDGETQ_INITIATIVES="name=package.module,..."`` adds a team's own initiatives."""
    extra = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, module = item.partition("=")
        if not sep or not name.strip() or not module.strip():
            raise ConfigError(f"BUDGETQ_INITIATIVES item {item!r} is not name=package.module")
        extra[name.strip()] = module.strip()
    return extra


REGISTRY.update(_extra_initiatives(os.environ.get("BUDGETQ_INITIATIVES", "")))


def names() -> list[str]:
    return sorted(REGISTRY)


def load(name: str) -> types.ModuleType:
    if name not in REGISTRY:
        raise InvalidInput(f"unknown initiative {name!r}; known initiatives: {', '.join(names())}")
    try:
        return importlib.import_module(REGISTRY[name])
    except ImportError as exc:
        raise ConfigError(f"initiative {name!r} cannot be loaded from {REGISTRY[name]!r}: {exc}; check BUDGETQ_INITIATIVES and the install") from None


def parse_params(name: str, raw: Mapping[str, Any]) -> Any:
    """Build the initiative's ``Params`` from user values, coercing strings from ``--param k=v``."""
    params_cls = load(name).Params
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    hints = typing.get_type_hints(params_cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise InvalidInput(
                f"initiative {name!r} has no parameter {key!r}; its parameters: {', '.join(fields) or 'none'}"
            )
        values[key] = _coerce(name, key, value, hints[key])
    try:
        params = params_cls(**values)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"initiative {name!r}: {exc}") from None
    return params


def params_to_json(params: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()}


def _coerce(initiative: str, key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if value is None or value == "":
            return None
        return _coerce(initiative, key, value, args[0])
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise InvalidInput(f"parameter {key!r} of {initiative!r} wants a list, got {value!r}")
        return tuple(_coerce(initiative, key, item, args[0] if args else str) for item in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise InvalidInput(f"parameter {key!r} of {initiative!r} wants true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool) or (hint is int and isinstance(value, float) and not value.is_integer()):
            raise InvalidInput(f"parameter {key!r} of {initiative!r} wants {hint.__name__}, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"parameter {key!r} of {initiative!r} wants {hint.__name__}, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise InvalidInput(f"parameter {key!r} of {initiative!r} must be finite, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise InvalidInput(f"parameter {key!r} of {initiative!r} wants text, got {value!r}")
        return str(value)
    return value

"""The initiative registry: what each initiative takes, what it reports, and where its payload lives.

Free of torch and Celery by construction: the producer validates a job's parameters here, and the
worker builds them again from the ledger row before it runs the payload. Each built-in initiative
has a module beside this one holding its frozen ``Params`` dataclass (every field has a default,
``__post_init__`` raises ``ValueError`` with a clear message), and a payload module
``worker.initiatives.<name>`` with ``run(params, ctx)``.

A team's own initiative plugs in with ``BUDGETQ_INITIATIVES=name=package.module``: one module with
``Params`` and ``run``, and optionally ``UNIT`` (the unit of its ``improvement`` metric) and
``USES_MODEL`` (whether it runs on another job's ``model`` artifact).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any, Optional

from core.errors import ConfigError, InvalidInput
from core.limits import check_name


class Unit(StrEnum):
    """The unit of an initiative's ``improvement`` metric. Per-dollar figures rank only within one."""

    F1_POINTS = "f1_points"  # macro-F1 difference x 100
    ACCURACY_POINTS = "accuracy_points"  # accuracy difference x 100
    SPEED_RATIO = "speed_ratio"  # how many times faster (treatment / control throughput)

    @property
    def label(self) -> str:
        return {"f1_points": "F1 points", "accuracy_points": "accuracy points", "speed_ratio": "x speed"}[self.value]


@dataclass(frozen=True)
class Spec:
    """One initiative as the producer and the worker both see it."""

    name: str
    params: type  # the frozen Params dataclass
    payload: str  # the module whose run(params, ctx) the worker calls
    unit: Optional[Unit] = None  # None: it reports no `improvement` (baseline, robustness, calibrate)
    uses_model: bool = False  # runs on the `model` artifact of a job it names (model_job or after:)
    makes_model: bool = False  # stores a `model` artifact that later jobs may use


# name -> (unit, uses a model, makes a model). A new initiative is one line here, one Params module
# beside this file, and one payload module under worker/initiatives/.
_BUILT_IN: dict[str, tuple[Optional[Unit], bool, bool]] = {
    "calibrate": (None, False, False),
    "baseline": (None, False, True),
    "robustness": (None, True, False),
    "augment": (Unit.F1_POINTS, True, True),
    "prompt_loop": (Unit.ACCURACY_POINTS, False, False),
    "curriculum": (Unit.ACCURACY_POINTS, False, True),
    "distill": (Unit.SPEED_RATIO, True, True),
}


@lru_cache(maxsize=8)
def registry(extra: str = "") -> dict[str, Spec]:
    """Every initiative: the built-in ones plus ``extra`` (``BUDGETQ_INITIATIVES``), by name."""
    specs = {
        name: Spec(name, importlib.import_module(f"specs.{name}").Params, f"worker.initiatives.{name}", *flags)
        for name, flags in _BUILT_IN.items()
    }
    for name, module_name in _extra_initiatives(extra).items():
        module = _import_extra(name, module_name)
        unit = getattr(module, "UNIT", None)
        specs[name] = Spec(name, module.Params, module_name, Unit(unit) if unit else None,
                           bool(getattr(module, "USES_MODEL", False)), bool(getattr(module, "MAKES_MODEL", False)))
    return specs


def get(name: str, extra: str = "") -> Spec:
    """The spec of ``name``, or ``InvalidInput`` listing the known initiatives."""
    specs = registry(extra)
    if name not in specs:
        raise InvalidInput(f"unknown initiative {name!r}; known initiatives: {', '.join(sorted(specs))}")
    return specs[name]


def names(extra: str = "") -> list[str]:
    return sorted(registry(extra))


def _extra_initiatives(raw: str) -> dict[str, str]:
    """``"name=package.module,..."`` -> {name: module}."""
    extra = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, module = item.partition("=")
        if not sep or not name.strip() or not _MODULE.fullmatch(module.strip()):
            raise ConfigError(f"BUDGETQ_INITIATIVES item {item!r} is not name=package.module")
        try:
            # The name is also the default queue name, so it takes a queue name's shape.
            extra[check_name(name.strip(), what="BUDGETQ_INITIATIVES: initiative name")] = module.strip()
        except InvalidInput as exc:
            raise ConfigError(str(exc)) from None
    return extra


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)


def _import_extra(name: str, module_name: str) -> types.ModuleType:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure while importing a team's module is a setting to fix
        raise ConfigError(
            f"initiative {name!r} cannot be loaded from {module_name!r} ({type(exc).__name__}: {exc}); check BUDGETQ_INITIATIVES"
        ) from None
    params = getattr(module, "Params", None)
    not_one = (
        f"BUDGETQ_INITIATIVES: {module_name!r} is not an initiative module; it needs a dataclass `Params`"
        " whose fields all have defaults and type hints, and a function `run(params, ctx)`"
    )
    if not (dataclasses.is_dataclass(params) and isinstance(params, type)) or not callable(getattr(module, "run", None)):
        raise ConfigError(not_one)
    try:
        typing.get_type_hints(params)
    except Exception:  # noqa: BLE001 - a hint naming something undefined
        raise ConfigError(not_one) from None
    unit = getattr(module, "UNIT", None)
    if unit is not None and unit not in set(Unit):
        raise ConfigError(f"BUDGETQ_INITIATIVES: {module_name}.UNIT is {unit!r}; use one of {', '.join(Unit)}")
    return module


def parse_params(name: str, raw: Mapping[str, Any], extra: str = "") -> Any:
    """Build initiative ``name``'s ``Params`` from user values, coercing strings from ``--param k=v``."""
    spec = get(name, extra)
    fields = {f.name: f for f in dataclasses.fields(spec.params)}
    hints = typing.get_type_hints(spec.params)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise InvalidInput(
                f"initiative {spec.name!r} has no parameter {key!r}; its parameters: {', '.join(fields) or 'none'}"
            )
        values[key] = _coerce(spec.name, key, value, hints[key])
    try:
        return spec.params(**values)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"initiative {spec.name!r}: {exc}") from None


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
        return _boolean(initiative, key, value)
    if hint in (int, float):
        return _number(initiative, key, value, hint)
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise InvalidInput(f"parameter {key!r} of {initiative!r} wants text, got {value!r}")
        return str(value)
    return value


def _boolean(initiative: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise InvalidInput(f"parameter {key!r} of {initiative!r} wants true or false, got {value!r}")


def _number(initiative: str, key: str, value: Any, hint: type) -> Any:
    if isinstance(value, bool) or (hint is int and isinstance(value, float) and not value.is_integer()):
        raise InvalidInput(f"parameter {key!r} of {initiative!r} wants {hint.__name__}, got {value!r}")
    try:
        number = hint(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"parameter {key!r} of {initiative!r} wants {hint.__name__}, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InvalidInput(f"parameter {key!r} of {initiative!r} must be finite, got {value!r}")
    if hint is int and abs(number) > _LARGEST_INT:
        # Parameters travel as JSON; past 2**53 other JSON readers lose digits, and no count is that large.
        raise InvalidInput(f"parameter {key!r} of {initiative!r} must be within +-{_LARGEST_INT}, got {value!r}")
    return number


_LARGEST_INT = 2**53

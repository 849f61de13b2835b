"""The payloads: one module per initiative, each with ``run(params, ctx)``, none importing Celery.

What each initiative takes and reports is in ``specs`` (free of torch); this package holds what it
does. ``load_payload`` imports a payload module for the worker. A helper that serves one payload only
lives beside it, in that payload's package (``prompt_loop/search.py`` and ``templates.py``,
``curriculum/sampling.py``, ``distill/student.py`` and ``serving.py``); what several payloads share is
in ``worker.ml``.
"""

from __future__ import annotations

import importlib
import types

from core.errors import ConfigError
from specs import Spec


def load_payload(spec: Spec) -> types.ModuleType:
    """The module whose ``run(params, ctx)`` executes ``spec``'s initiative."""
    try:
        return importlib.import_module(spec.payload)
    except ImportError as exc:
        raise ConfigError(f"initiative {spec.name!r} cannot be loaded from {spec.payload!r}: {exc}; check the install") from None

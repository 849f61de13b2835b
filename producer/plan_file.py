"""Reading a plan file: YAML, within limits that hold whatever the file holds.

A plan is a page of YAML. Reading one is bounded in its size, in how deep it nests, and in how many
values it expands to once YAML aliases are followed (an alias repeats what its anchor holds, so ten
lines of aliases can stand for a billion values, which a later repr or JSON dump would build). A
key given twice in one mapping is refused: PyYAML keeps the last silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from core.errors import InvalidInput

MAX_PLAN_BYTES = 1 << 20
MAX_PLAN_DEPTH = 16
MAX_PLAN_VALUES = 20_000


def read_yaml(path: Path) -> Any:
    """A plan file's YAML, read within the limits above; every problem is ``InvalidInput`` naming the file."""
    where = str(path)
    if path.is_dir():
        raise InvalidInput(f"{where} is a folder; give the plan's YAML file, like examples/demo.yaml")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise InvalidInput(f"{where}: no such plan file") from None
    except OSError as exc:
        raise InvalidInput(f"{where}: cannot read the plan ({exc.strerror or exc}); check the path and its permissions") from None
    if len(data) > MAX_PLAN_BYTES:
        raise InvalidInput(f"{where}: the plan is over {MAX_PLAN_BYTES // 1024} KiB; a plan lists initiatives, not data")
    try:
        doc = yaml.load(data.decode("utf-8"), Loader=_PlanLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise InvalidInput(f"{where}: the YAML nests too deeply; a plan needs a few levels") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{where}: not valid YAML ({_first_line(exc)})") from None
    _within_limits(where, doc)
    return doc


class _PlanLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` may be overridden by the keys beside it
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeLoader refuses it with its own message
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (lines {first} and {line}); give each key once", key_node.start_mark
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _within_limits(where: str, doc: Any) -> None:
    """Walk the document as its readers will (aliases expanded), refusing it past the limits."""
    count, stack = 0, [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1 + (len(value) // 1000 if isinstance(value, str) else 0)  # long text counts by the kilobyte
        if count > MAX_PLAN_VALUES:
            raise InvalidInput(
                f"{where}: the plan expands to more than {MAX_PLAN_VALUES} values (YAML aliases repeat what their anchor holds);"
                " write the values out instead of nesting aliases"
            )
        if depth > MAX_PLAN_DEPTH:
            raise InvalidInput(f"{where}: the YAML nests deeper than {MAX_PLAN_DEPTH} levels; a plan needs a few")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]

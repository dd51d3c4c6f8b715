"""Parameters are data, never code: YAML restricted to plain values, and the Python literals the runner injects.

A profile (``profiles/<name>.yml``), a calibration plan and every ``apnb run -p KEY VALUE`` are read by
:func:`load`, which accepts only null, booleans, integers, finite floats, strings, lists and mappings. Any
other tag (``!!binary``, ``!!set``, ``!!timestamp``, ``!!python/...``, an unquoted date) is refused with one
line naming the file or option, the parameter, the tag, the line and the column: ``yaml.safe_load`` turns
``!!binary`` into bytes and ``!!set`` into a set, which papermill 2.x writes into the notebook as
``"<str(value)>"`` without escaping, so a crafted value became code in the parameters cell.

The values then go into the notebook as :func:`literal`, text the runner writes itself from these plain
types and that ``ast.literal_eval`` reads back to the same value (checked for every cell it injects).
"""
from __future__ import annotations

import ast
import json
import math

import yaml

_CORE = "tag:yaml.org,2002:"
PLAIN_TAGS = {_CORE + t for t in ("null", "bool", "int", "float", "str", "seq", "map")}
PLAIN = "null, true/false, integers, finite floats, strings, lists and mappings"


class PlainDataError(ValueError):
    """A YAML text that is not plain data, or does not parse; the message names where, and the fix."""


def _where(source: str, mark) -> str:
    return f"{source} line {mark.line + 1} column {mark.column + 1}" if mark is not None else source


def _check(node, path: str, source: str, loader) -> None:
    if node.tag not in PLAIN_TAGS:
        tag = node.tag.replace(_CORE, "!!")
        hint = " (a date: quote it to give a string)" if tag == "!!timestamp" else ""
        raise PlainDataError(f"{_where(source, node.start_mark)}: {path or 'the value'} has the tag {tag}{hint}; "
                             f"parameters are plain data ({PLAIN}): remove the tag")
    if node.tag == _CORE + "float":
        if not math.isfinite(loader.construct_yaml_float(node)):  # .inf, .nan, and 1.0e+400 (overflows)
            raise PlainDataError(f"{_where(source, node.start_mark)}: {path or 'the value'} = {node.value} is not a "
                                 f"finite number: give a finite value")
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            _check(k, path, source, loader)
            key = k.value if isinstance(k, yaml.ScalarNode) else "?"
            _check(v, f"{path}.{key}" if path else str(key), source, loader)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _check(v, f"{path}[{i}]", source, loader)


def load(text: str, source: str = "<string>", path: str = ""):
    """The plain value of a YAML ``text``; :class:`PlainDataError` (one line naming ``source``, the parameter
    ``path`` inside it, line and column) for a syntax error or anything but plain data."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check(node, path, source, loader)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise PlainDataError(f"{_where(source, mark)}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise PlainDataError(f"{source}: not valid YAML: {str(e).splitlines()[0]}") from None
    finally:
        loader.dispose()


def load_file(path) -> object:
    from pathlib import Path

    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise PlainDataError(f"{p}: cannot read it: {e}") from None
    return load(text, str(p))


def literal(v) -> str:
    """``v`` (plain data) as Python source that ``ast.literal_eval`` reads back to ``v``, in the notebooks'
    style (double quotes); anything but plain data is a ``TypeError``, never a string fallback."""
    if v is None or isinstance(v, bool):
        return repr(v)
    if isinstance(v, int):
        return repr(int(v))
    if isinstance(v, float):
        if not math.isfinite(v):
            raise TypeError(f"{v} is not a finite number")
        return repr(float(v))
    if isinstance(v, str):
        s = json.dumps(v, ensure_ascii=False)
        try:
            ok = ast.literal_eval(s) == v
        except (ValueError, SyntaxError):
            ok = False
        return s if ok else repr(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(literal(x) for x in v) + "]"
    raise TypeError(f"{type(v).__name__} is not plain data ({PLAIN})")


def parameters_cell(params: dict) -> str:
    """The source of the injected-parameters cell: one ``name = literal`` line per parameter, each checked
    to read back to its value."""
    lines = ["# Parameters"]
    for name, value in params.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise TypeError(f"parameter name {name!r} is not a Python identifier")
        text = literal(value)
        if ast.literal_eval(text) != value and not isinstance(value, tuple):
            raise TypeError(f"parameter {name}: {text} does not read back to its value")
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"

"""What the API refuses inside a well-formed JSON body because a database or the JSON encoder would refuse it.

A value a client sends must be storable and showable the same way on Postgres and SQLite, so one walk over a
parsed body refuses, before anything is written:
- a NUL character (`\\u0000`) in any string or object key (Postgres text and JSONB refuse it; SQLite keeps it);
- a lone UTF-16 surrogate (`"\\ud800"`), which is not Unicode text (psycopg cannot encode it);
- a float that is not finite (NaN, Infinity, `1e400`);
- an integer outside the signed 64-bit range `[-2**63, 2**63 - 1]` (what every JSON client and a BIGINT hold);
- nesting deeper than `MAX_DEPTH` containers (counted from the body itself), which JSON encoders and renderers
  refuse to recurse into.
Each refusal is 422 `invalid_value` naming the field (a dotted path) and, for batches, the line. The JSON parser
itself (`loads`) refuses NaN/Infinity literals and absurd number literals with 400 `invalid_json`, as the RFC
does. `safe_for_display` is the read-side guard: a value stored before these checks existed is shown as `null`
rather than failing a whole page. It knows nothing of routes, kinds or storage.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from api.errors import ApiError

MAX_DEPTH = 32
MIN_INT = -(2**63)
MAX_INT = 2**63 - 1
MAX_NUMBER_LITERAL = 40  # characters in one JSON number literal; more is refused before int()/float() runs
_SURROGATE = re.compile("[\ud800-\udfff]")


class UnsafeValue(ValueError):
    """A value the database or the JSON encoder would refuse; `path` names where it is."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or 'body'}: {reason}")
        self.path = path
        self.reason = reason


class _BadLiteral(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _BadLiteral(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_LITERAL:
        raise _BadLiteral("number literal too long")
    value = float(text)
    if not math.isfinite(value):
        raise _BadLiteral(f"number {text[:20]} is out of range")
    return value


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_LITERAL:
        raise _BadLiteral("integer literal too long")
    return int(text)


def loads(raw: bytes | str) -> Any:
    """`json.loads` that refuses NaN/Infinity literals, non-finite floats and absurd number literals
    (raises `ValueError`; `json.JSONDecodeError` for malformed text)."""
    return json.loads(raw, parse_constant=_refuse_constant, parse_float=_parse_float, parse_int=_parse_int)


def check_value(value: Any, path: str = "") -> None:
    """Raise `UnsafeValue` for the first thing in `value` that a database or encoder would refuse."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                raise UnsafeValue(where, "integer out of the signed 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnsafeValue(where, "number must be finite")
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise UnsafeValue(where, f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    key_text = str(key)
                    _check_text(key_text, _join(where, key_text[:64]))
                    stack.append((child, _join(where, key_text[:64]), depth + 1))
            else:
                stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise UnsafeValue(where, "text must not contain NUL (\\u0000)")
    if _SURROGATE.search(text):
        raise UnsafeValue(where, "text must not contain a lone surrogate")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def refuse_unsafe(value: Any, prefix: str = "", line: int | None = None, path: str = "") -> None:
    """`check_value` as the API answers it: 422 `invalid_value` naming the field (and the batch line)."""
    try:
        check_value(value, path)
    except UnsafeValue as exc:
        message = f"{prefix}{exc.path or 'body'}: {exc.reason}"
        raise ApiError(422, "invalid_value", message, exc.path or None, line=line) from None


def safe_for_display(value: Any) -> Any:
    """`value`, or None when it could not be encoded (stored before the checks above existed)."""
    try:
        check_value(value)
    except UnsafeValue:
        return None
    return value

"""Strict JSON: what ``json.loads`` accepts but nocosup must never store or echo.

``json.loads`` takes NaN and Infinity (and ``1e999``, which becomes infinity), integers of
thousands of digits (Python refuses to print those past 4300), nesting as deep as the
recursion limit allows (then RecursionError), and lone surrogates (``"\\ud800"``) that no
UTF-8 encoder can write back. Every one of those once turned into a 500 on a later read.
:func:`loads` refuses them all with a :class:`JSONRejected` naming the problem and, where
it can, the path of the offending value (``options.n``).

No heavy imports: the CLI uses this module too.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Deepest nesting of arrays and objects accepted.
MAX_DEPTH = 32
#: Integers must fit in a signed 64-bit integer (what SQL columns and most clients hold).
MIN_INT = -(1 << 63)
MAX_INT = (1 << 63) - 1
#: Digits a number may have before it is parsed at all (int() of a huge string is slow).
MAX_NUMBER_CHARS = 40

#: Strings (so that their brackets do not count) and brackets: enough to measure depth.
#: A string always matches, closed or not (up to the end), so that the scan stays linear:
#: requiring the closing quote made ``"`` followed by many ``\"`` quadratic.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{}]', re.S)


class JSONRejected(ValueError):
    """A document that is not strict JSON; ``path`` names the bad value when known."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class _Bad:
    """Stands in for a rejected number until the walk finds where it sits."""

    def __init__(self, text: str, why: str) -> None:
        self.text = text
        self.why = why


def _int(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        return _Bad(text[:12] + "...", f"integer of {len(text)} characters is too long")
    value = int(text)
    if not MIN_INT <= value <= MAX_INT:
        return _Bad(text, "integer is outside the signed 64-bit range")
    return value


def _float(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        return _Bad(text[:12] + "...", f"number of {len(text)} characters is too long")
    value = float(text)
    if not math.isfinite(value):
        return _Bad(text, "number is out of range (it would be infinite)")
    return value


def _constant(text: str) -> Any:
    return _Bad(text, "NaN and Infinity are not JSON")


def check_depth(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than ``limit`` before the parser recurses into it."""
    depth = 0
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise JSONRejected(f"JSON is nested deeper than {limit} levels")
        elif token in (b"]", b"}"):
            depth -= 1


def loads(raw: bytes | str) -> Any:
    """Parse ``raw`` (UTF-8) as strict JSON, or raise :class:`JSONRejected`."""
    if isinstance(raw, str):
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise JSONRejected("text is not valid Unicode (a lone surrogate)") from None
    else:
        data = raw
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONRejected(f"body is not valid UTF-8 (byte {exc.start})") from None
    check_depth(data)
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise JSONRejected(f"not valid JSON: {exc}") from None
    except RecursionError:  # check_depth should make this unreachable
        raise JSONRejected(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
    _walk(value, "")
    return value


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _walk(value: Any, path: str) -> None:
    if isinstance(value, _Bad):
        raise JSONRejected(f"{path or 'value'}: {value.why}: {value.text}", path or None)
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, _join(path, key.encode("utf-8", "replace").decode()))
            _walk(item, _join(path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, _join(path, i))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        where = path or "value"
        raise JSONRejected(
            f"{where}: string holds a lone surrogate (\\ud800-\\udfff), not valid Unicode",
            path or None,
        ) from None

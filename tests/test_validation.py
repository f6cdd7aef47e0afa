"""Admin API input checks that need no server."""

from __future__ import annotations

import json

import pytest

from nocosup import strictjson, validation
from nocosup.errors import InvalidInput


@pytest.mark.parametrize("name", ["nl2\n", "a\n", "ok\r", " ok", "ok ", "a" * 41, "", "A"])
def test_app_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validation.app_name(name)
    assert info.value.details == {"field": "name"}


@pytest.mark.parametrize("name", ["a", "nl2", "my-app_2", "a" * 40])
def test_app_name_is_accepted(name: str) -> None:
    assert validation.app_name(name) == name


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        (b'{"n": 1e999}', "n", "infinite"),
        (b'{"n": NaN}', "n", "NaN"),
        (b'{"a": [Infinity]}', "a[0]", "NaN and Infinity"),
        (b'{"n": ' + b"1" * 5000 + b"}", "n", "5000 characters"),
        (b'{"n": -9223372036854775809}', "n", "64-bit"),
        (b'{"s": "\\ud800"}', "s", "lone surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, None, "deeper than 32"),
        (b'{"s": "\\xff"}'.replace(b"\\xff", b"\xff"), None, "UTF-8"),
        (b"{nope", None, "not valid JSON"),
    ],
)
def test_strict_json_refuses_what_json_loads_takes(
    raw: bytes, path: str | None, words: str
) -> None:
    with pytest.raises(strictjson.JSONRejected) as caught:
        strictjson.loads(raw)
    assert caught.value.path == path
    assert words in caught.value.message


def test_strict_json_takes_ordinary_json() -> None:
    text = '{"a": [1, -9223372036854775808, 2.5e10, "é", null, true], "b": {"c": "]"}}'
    assert strictjson.loads(text.encode()) == json.loads(text)
    assert strictjson.loads(b"[" * 32 + b"]" * 32) is not None


def test_strict_json_depth_scan_is_linear_on_unterminated_strings() -> None:
    # '"' then \" half a million times: a scan that needed the closing quote took hours
    for raw in (b'"' + b'\\"' * 500_000, b'"' + b'\\"' * 500_000 + b"\\"):
        with pytest.raises(strictjson.JSONRejected, match="not valid JSON"):
            strictjson.loads(raw)

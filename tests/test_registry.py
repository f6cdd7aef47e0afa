"""The registry module: its timestamp format and its tables."""

from __future__ import annotations

import re

from nocosup.registry import iso_time, now_iso


def test_iso_time_has_milliseconds_and_a_z() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(1_795_594_972.409) == "2026-11-25T08:22:52.409Z"
    assert iso_time(1.2349) == "1970-01-01T00:00:01.234Z"  # truncated, like the old copies
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", now_iso())
    assert iso_time(0) < iso_time(0.001) < now_iso()  # sortable as text


def test_heartbeat_scores_use_the_same_format() -> None:
    from nocosup.remote import _iso_ms

    assert _iso_ms(1_795_594_972_409) == "2026-11-25T08:22:52.409Z"  # zset scores are ms
    assert _iso_ms(None) is None and _iso_ms(0) is None

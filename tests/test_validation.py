"""Admin API input checks that need no server."""

from __future__ import annotations

import pytest

from nocosup import validation
from nocosup.errors import InvalidInput


@pytest.mark.parametrize("name", ["nl2\n", "a\n", "ok\r", " ok", "ok ", "a" * 41, "", "A"])
def test_app_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validation.app_name(name)
    assert info.value.details == {"field": "name"}


@pytest.mark.parametrize("name", ["a", "nl2", "my-app_2", "a" * 40])
def test_app_name_is_accepted(name: str) -> None:
    assert validation.app_name(name) == name

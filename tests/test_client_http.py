"""The admin API client (nocosup/client.py) and the CLI on top of it, against answers a
real supervisor never gives: httpx is mocked with respx, so every corner case is exact.

Each case is checked twice: what the client raises, and what ``nocosup`` prints and
returns when ``cli.main`` runs in this process (an exception escaping main is a
traceback for the user, and fails the test).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from nocosup import cli
from nocosup.client import (
    AdminClient,
    ApiError,
    ClientConfig,
    ConnectionFailed,
    RequestTimedOut,
)

URL = "http://supervisor.test:8000"
TOKEN = "t0ken-for-respx"
URL_HINT = "  is NOCOSUP_URL (or --url) the supervisor's base URL?"
APP = {
    "name": "crm",
    "title": "CRM",
    "environments": ["local"],
    "statuses": {"local": "running"},
    "errors": {},
    "desired_state": "running",
    "options": {"startMode": "on_first_request", "dbConnType": "new_database"},
    "database": {"connType": "new_database", "name": "nocosup_crm"},
    "version": 1,
}
NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    """The mocked supervisor: every route a test declares must be called, nothing else."""
    with respx.mock(base_url=URL, assert_all_called=True, assert_all_mocked=True) as router:
        yield router


@pytest.fixture
def client() -> Iterator[AdminClient]:
    with AdminClient(ClientConfig(URL, TOKEN)) as c:
        yield c


@pytest.fixture
def nocosup(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``nocosup ARGS`` in process, pointed at the mocked URL: (exit code, stdout, stderr)."""
    monkeypatch.setenv("NOCOSUP_URL", URL)
    monkeypatch.setenv("NOCOSUP_ADMIN_TOKEN", TOKEN)

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return run


def json_response(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, json=body)


# --- the happy path the corner cases are measured against ---------------------------------


def test_a_good_answer_is_returned_and_the_call_carries_the_token(
    api: respx.MockRouter, client: AdminClient, nocosup: Any
) -> None:
    route = api.get("/api/apps/crm").mock(return_value=json_response(200, APP))
    assert client.get_app("crm") == APP
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["accept"] == "application/json"

    code, out, err = nocosup("apps", "show", "crm", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == APP


# --- nothing answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection refused"),
        (
            httpx.ConnectError("[Errno -2] Name or service not known"),
            "[Errno -2] Name or service not known",
        ),
        (httpx.ConnectTimeout("timed out"), "connection timed out"),
    ],
)
def test_unreachable_server_is_connection_failed_naming_the_url(
    api: respx.MockRouter,
    client: AdminClient,
    nocosup: Any,
    error: Exception,
    reason: str,
) -> None:
    api.get("/api/environments").mock(side_effect=error)
    with pytest.raises(ConnectionFailed) as info:
        client.list_environments()
    assert (info.value.url, info.value.reason) == (URL, reason)
    assert str(info.value) == f"cannot connect to {URL}: {reason}"

    code, out, err = nocosup("envs", "list")
    assert (code, out) == (1, "")
    assert err == (
        f"nocosup: cannot connect to {URL} ({reason}); is 'nocosup serve' running there? "
        "set NOCOSUP_URL or pass --url\n"
    )


def test_unreachable_server_during_a_start_exits_1(api: respx.MockRouter, nocosup: Any) -> None:
    """start sends its command from a thread of its own: the failure there still reaches
    the user as the one-line message."""
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    api.post("/api/apps/crm/start", params={"wait": "true"}).mock(side_effect=refused)
    code, out, err = nocosup("apps", "start", "crm", "--json")
    assert (code, out) == (1, "")
    assert err == (
        f"nocosup: cannot connect to {URL} (connection refused); is 'nocosup serve' running "
        "there? set NOCOSUP_URL or pass --url\n"
    )


# --- error answers in the admin API's own shape -------------------------------------------


def test_5xx_with_an_error_body_is_api_error_with_its_code_and_message(
    api: respx.MockRouter, client: AdminClient, nocosup: Any
) -> None:
    body = {
        "error": {
            "code": "COMMAND_FAILED",
            "message": "application 'crm' did not start: local: RuntimeError: no db",
            "results": {"local": {"ok": False, "status": "error", "error": "RuntimeError: no db"}},
        }
    }
    api.post("/api/apps/crm/start", params={"wait": "true"}).mock(
        return_value=json_response(502, body)
    )
    with pytest.raises(ApiError) as info:
        client.command("crm", "start")
    exc = info.value
    assert (exc.status, exc.code) == (502, "COMMAND_FAILED")
    assert exc.message == "application 'crm' did not start: local: RuntimeError: no db"
    assert exc.body == body
    assert exc.details["results"]["local"]["ok"] is False

    code, out, err = nocosup("apps", "start", "crm", "--json")
    assert code == 1
    assert json.loads(out) == body  # --json: the error body, as the API sent it
    assert err == (
        "nocosup: application 'crm' did not start: local: RuntimeError: no db (COMMAND_FAILED)\n"
        "  local: error: RuntimeError: no db\n"
    )


def test_error_object_without_code_or_message_falls_back_to_the_status(
    api: respx.MockRouter, client: AdminClient, nocosup: Any
) -> None:
    api.get("/api/apps").mock(return_value=json_response(503, {"error": {}}))
    with pytest.raises(ApiError) as info:
        client.list_apps()
    assert (info.value.status, info.value.code, info.value.message) == (
        503,
        "HTTP_503",
        "Service Unavailable",
    )
    code, _, err = nocosup("apps", "list")
    assert code == 1
    assert err.splitlines() == ["nocosup: Service Unavailable (HTTP_503)", URL_HINT]


def test_401_says_the_token_is_wrong_and_where_to_set_it(
    api: respx.MockRouter, client: AdminClient, nocosup: Any
) -> None:
    message = "missing or wrong admin token: send 'Authorization: Bearer <token>'"
    api.get("/api/apps").mock(
        return_value=json_response(401, {"error": {"code": "UNAUTHORIZED", "message": message}})
    )
    with pytest.raises(ApiError) as info:
        client.list_apps()
    assert (info.value.status, info.value.code, info.value.message) == (
        401,
        "UNAUTHORIZED",
        message,
    )

    code, out, err = nocosup("apps", "list")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"nocosup: {message} (UNAUTHORIZED)",
        "  check NOCOSUP_ADMIN_TOKEN or --token",
    ]


def test_a_well_encoded_gzip_error_body_is_read(api: respx.MockRouter, client: AdminClient) -> None:
    """An error body a proxy compressed is decoded and read like any other."""
    body = {"error": {"code": "APP_NOT_FOUND", "message": "application 'x' does not exist"}}
    api.get("/api/apps/x").mock(
        return_value=httpx.Response(
            404,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
            content=iter([gzip.compress(json.dumps(body).encode())]),
        )
    )
    with pytest.raises(ApiError) as info:
        client.get_app("x")
    assert (info.value.code, info.value.message) == (
        "APP_NOT_FOUND",
        "application 'x' does not exist",
    )


# --- answers that are not the admin API's -------------------------------------------------

# (status, headers, body, what the message must show of the answer)
NOT_THE_API: list[tuple[int, dict[str, str], bytes, list[str]]] = [
    (502, {"content-type": "text/html"}, NGINX_502, ["HTTP 502", "text/html", "502 Bad Gateway"]),
    (500, {}, b"", ["HTTP 500", "an empty body"]),
    (504, {"content-type": "text/html"}, b"", ["HTTP 504", "an empty body"]),
    (503, {"content-type": "application/json"}, b'["down"]', ["HTTP 503", '["down"]']),
    (
        503,
        {"content-type": "application/json"},
        b'{"error": "maintenance until 14:00"}',
        ["HTTP 503", "maintenance until 14:00"],
    ),
    (404, {"content-type": "application/json"}, b'{"detail": "Not Found"}', ["HTTP 404", "detail"]),
    (502, {"content-type": "text/plain"}, b"\xff\xfe upstream gone", ["HTTP 502", "upstream gone"]),
    (
        401,
        {"content-type": "text/html"},
        b"<h1>401 Authorization Required</h1>",
        ["HTTP 401", "401 Authorization Required"],
    ),
]


@pytest.mark.parametrize(
    ("status", "headers", "body", "shown"),
    NOT_THE_API,
    ids=["html", "empty", "empty-html", "json-array", "error-string", "detail", "binary", "401"],
)
def test_an_error_that_is_not_the_api_s_says_what_came_back(
    api: respx.MockRouter,
    client: AdminClient,
    nocosup: Any,
    status: int,
    headers: dict[str, str],
    body: bytes,
    shown: list[str],
) -> None:
    api.get("/api/apps").mock(return_value=httpx.Response(status, headers=headers, content=body))
    with pytest.raises(ApiError) as info:
        client.list_apps()
    exc = info.value
    assert (exc.status, exc.code, exc.body) == (status, f"HTTP_{status}", None)
    assert exc.message.startswith(f"GET {URL}/api/apps answered HTTP {status} with ")
    for text in shown:
        assert text in exc.message, exc.message

    code, out, err = nocosup("apps", "list")
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == 2 and lines[1] == URL_HINT, err
    assert lines[0].startswith(f"nocosup: GET {URL}/api/apps answered HTTP {status} with ")
    assert lines[0].endswith(f"(HTTP_{status})")
    for text in shown:
        assert text in lines[0], err


def test_a_body_that_cannot_be_decoded_is_api_error_not_a_crash(
    api: respx.MockRouter, client: AdminClient, nocosup: Any
) -> None:
    """A proxy that labels its answer gzip but sends something else: httpx raises
    DecodingError, which is neither a transport error nor a timeout."""
    headers = {"content-type": "text/html", "content-encoding": "gzip"}

    def broken_gzip(request: httpx.Request) -> httpx.Response:
        # An iterator, not bytes: respx hands it over unread, so httpx decodes it while
        # the client reads the answer, as it does with a real server.
        return httpx.Response(502, headers=headers, content=iter([b"not gzip"]))

    api.get("/api/apps").mock(side_effect=broken_gzip)
    with pytest.raises(ApiError) as info:
        client.list_apps()
    assert (info.value.status, info.value.code) == (502, "HTTP_502")
    assert info.value.message.startswith(
        f"GET {URL}/api/apps answered HTTP 502 with a body that cannot be decoded "
        "(content-encoding gzip: "
    )

    code, out, err = nocosup("apps", "list")
    assert (code, out) == (1, "")
    assert err.startswith(
        f"nocosup: GET {URL}/api/apps answered HTTP 502 with a body that cannot be decoded "
    )
    assert err.endswith(f"(HTTP_502)\n{URL_HINT}\n")


# --- a success status with a body that is not the admin API's -----------------------------


@pytest.mark.parametrize(
    ("headers", "body", "shown"),
    [
        (
            {"content-type": "text/html"},
            b"<!doctype html><title>Welcome to some other site</title>",
            ["text/html", "Welcome to some other site"],
        ),
        ({}, b"", ["an empty body"]),
        ({"content-type": "application/json"}, b"[1, 2]", ["[1, 2]"]),
        ({"content-type": "application/json"}, b'{"apps": "none"}', ['"apps"']),
        ({"content-type": "application/json"}, b'{"apps": [{"id": 7}]}', ['"id"']),
    ],
    ids=["html", "empty", "json-array", "apps-not-a-list", "apps-without-names"],
)
def test_2xx_that_is_not_the_api_s_is_api_error(
    api: respx.MockRouter,
    client: AdminClient,
    nocosup: Any,
    headers: dict[str, str],
    body: bytes,
    shown: list[str],
) -> None:
    api.get("/api/apps").mock(return_value=httpx.Response(200, headers=headers, content=body))
    with pytest.raises(ApiError) as info:
        client.list_apps()
    assert (info.value.status, info.value.code) == (200, "HTTP_200")
    assert info.value.message.startswith(f"GET {URL}/api/apps answered HTTP 200 with ")
    assert "not the nocosup admin API" in info.value.message
    for text in shown:
        assert text in info.value.message, info.value.message

    code, out, err = nocosup("apps", "list")
    assert (code, out) == (1, "")
    assert err.startswith(f"nocosup: GET {URL}/api/apps answered HTTP 200 with ")
    assert err.endswith(f"(HTTP_200)\n{URL_HINT}\n")


def test_create_answered_with_json_of_another_api_exits_1(
    api: respx.MockRouter, nocosup: Any
) -> None:
    api.post("/api/apps").mock(return_value=json_response(201, {"id": 42, "ok": True}))
    code, out, err = nocosup("apps", "create", "crm")
    assert (code, out) == (1, "")
    assert err.startswith(f"nocosup: POST {URL}/api/apps answered HTTP 201 with ")
    assert err.endswith(f"(HTTP_201)\n{URL_HINT}\n")


# --- no answer in time --------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout("timed out"), httpx.WriteTimeout("timed out"), httpx.PoolTimeout("full")],
    ids=["read", "write", "pool"],
)
def test_a_timeout_after_connecting_is_request_timed_out(
    api: respx.MockRouter, client: AdminClient, nocosup: Any, error: Exception
) -> None:
    api.get("/api/environments").mock(side_effect=error)
    with pytest.raises(RequestTimedOut) as info:
        client.list_environments()
    assert (info.value.url, info.value.timeout) == (f"{URL}/api/environments", 60.0)

    code, out, err = nocosup("envs", "list")
    assert (code, out) == (1, "")
    assert err == f"nocosup: {URL}/api/environments did not answer within 60 s\n"


def test_a_read_timeout_names_the_timeout_of_that_call(
    api: respx.MockRouter, client: AdminClient
) -> None:
    api.get("/api/apps/crm").mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(RequestTimedOut) as info:
        client.get_app("crm", timeout=2.5)
    assert str(info.value) == f"{URL}/api/apps/crm did not answer within 2.5 s"


def test_a_read_timeout_during_a_start_exits_1(api: respx.MockRouter, nocosup: Any) -> None:
    api.post("/api/apps/crm/start", params={"wait": "true"}).mock(
        side_effect=httpx.ReadTimeout("timed out")
    )
    code, out, err = nocosup("apps", "start", "crm", "--json")
    assert (code, out) == (1, "")
    assert err.startswith(f"nocosup: {URL}/api/apps/crm/start did not answer within ")

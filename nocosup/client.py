"""A small synchronous client of the admin API, used by the ``nocosup apps|envs`` commands.

It turns every way a call can fail into one of three exceptions the CLI prints without a
traceback: :class:`ApiError` (the server answered with an error body, or with something
that is not the admin API), :class:`ConnectionFailed` (nothing answered at the URL) and
:class:`RequestTimedOut`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from nocosup.config import VARIABLES
from nocosup.errors import ConfigError

if TYPE_CHECKING:
    # httpx (which loads rich and click when they are installed: about 90 ms and several
    # MiB) is imported by the code that talks to a server: ``nocosup serve`` never does.
    import httpx

URL_VARIABLE = "NOCOSUP_URL"
TOKEN_VARIABLE = "NOCOSUP_ADMIN_TOKEN"
#: Seconds any call that does not wait for a start or stop may take.
DEFAULT_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0


class ApiError(Exception):
    """The server answered with an error: ``code`` and ``message`` come from its JSON body."""

    def __init__(
        self, status: int, code: str, message: str, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{message} ({code})")
        self.status = status
        self.code = code
        self.message = message
        #: The whole JSON answer, when there was one (``{"error": {...}}``).
        self.body = body

    @property
    def details(self) -> dict[str, Any]:
        """The error object with its extra fields (``results``, ``app``, ``field``...)."""
        error = self.body.get("error") if self.body else None
        if isinstance(error, dict):
            return error
        return {}


class ConnectionFailed(Exception):
    """Nothing answered at the URL (refused, unknown host, TLS failure...)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot connect to {url}: {reason}")
        self.url = url
        self.reason = reason


class RequestTimedOut(Exception):
    """The server accepted the call but did not answer in time."""

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(f"{url} did not answer within {timeout:g} s")
        self.url = url
        self.timeout = timeout


@dataclass(frozen=True)
class ClientConfig:
    """Where the admin API is and the token it wants."""

    url: str
    token: str

    @classmethod
    def resolve(
        cls, url: str | None, token: str | None, environ: Mapping[str, str]
    ) -> ClientConfig:
        """Flags win over the environment; a missing token or a bad URL is a ConfigError."""
        raw_url = (url or "").strip() or (environ.get(URL_VARIABLE) or "").strip()
        if not raw_url:
            raw_url = _default(URL_VARIABLE)
        if not _is_http_url(raw_url):
            source = "--url" if (url or "").strip() else URL_VARIABLE
            raise ConfigError(
                f"{source} must be an http:// or https:// URL such as "
                f"http://127.0.0.1:8000; got {raw_url!r}"
            )
        raw_token = (token or "").strip() or (environ.get(TOKEN_VARIABLE) or "").strip()
        if not raw_token:
            raise ConfigError(
                f"no admin token: set {TOKEN_VARIABLE} or pass --token. A server started "
                f"without {TOKEN_VARIABLE} keeps the token it generated in its storage dir: "
                f"export {TOKEN_VARIABLE}=$(cat storage/admin_token)"
            )
        if not raw_token.isascii() or not raw_token.isprintable():
            source = "--token" if (token or "").strip() else TOKEN_VARIABLE
            raise ConfigError(
                f"{source} must be printable ASCII (it travels in an HTTP header); "
                "it holds other characters: copy it again from the server's "
                "NOCOSUP_ADMIN_TOKEN or storage/admin_token"
            )
        # A trailing slash would make every path start with '//'.
        return cls(url=raw_url.rstrip("/"), token=raw_token)


def _is_http_url(text: str) -> bool:
    import httpx

    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def _default(name: str) -> str:
    for variable in VARIABLES:
        if variable.name == name and variable.default:
            return variable.default
    raise LookupError(name)  # pragma: no cover - VARIABLES declares it


class AdminClient:
    """One connection pool to the admin API; use it as a context manager."""

    def __init__(self, config: ClientConfig, timeout: float = DEFAULT_TIMEOUT) -> None:
        import httpx

        self.config = config
        self._http = httpx.Client(
            base_url=config.url,
            headers={"Authorization": f"Bearer {config.token}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
        )
        self.timeout = timeout

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the API -----------------------------------------------------------------------

    def list_apps(self, **params: str | int) -> dict[str, Any]:
        """One page: ``params`` are the query of ``GET /api/apps`` (limit, cursor, status,
        environment, prefix)."""
        return self._call("GET", "/api/apps", params=params, shape=_is_app_list)

    def get_app(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        return self._call("GET", _app_path(name), timeout=timeout, shape=_is_app)

    def create_app(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/apps", json=body, shape=_is_app)

    def update_app(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", _app_path(name), json=body, shape=_is_app)

    def list_commands(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"{_app_path(name)}/commands", shape=_is_command_list)

    def run_command(
        self, name: str, command: str, args: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """POST a maintenance command; the server answers once every environment ran it."""
        body = {"command": command, "args": args}
        return self._call(
            "POST", f"{_app_path(name)}/commands", json=body, timeout=timeout, shape=_is_app
        )

    def command(self, name: str, verb: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST start, stop or move (``body``: ``{"to": env}``) and wait for it: the
        server answers once it is done."""
        if verb not in ("start", "stop", "move"):
            raise ValueError(verb)
        params = {} if verb == "move" else {"wait": "true"}
        return self._call(
            "POST", f"{_app_path(name)}/{verb}", params=params, json=body, shape=_is_app
        )

    def delete_app(self, name: str, drop_database: bool, force: bool = False) -> dict[str, Any]:
        params = {"drop_database": "true" if drop_database else "false"}
        if force:
            params["force"] = "true"
        return self._call("DELETE", _app_path(name), params=params)

    def list_environments(self) -> dict[str, Any]:
        return self._call("GET", "/api/environments", shape=_is_environment_list)

    def delete_environment(self, name: str, force: bool = False) -> dict[str, Any]:
        path = "/api/environments/" + quote(name, safe="")
        return self._call("DELETE", path, params={"force": "true" if force else "false"})

    # --- plumbing ----------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        timeout: float | None = None,
        shape: Callable[[dict[str, Any]], bool] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The answer's JSON object; ``shape`` tells a 2xx of the admin API from another's."""
        import httpx

        url = self.config.url + path
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout))
        try:
            request = self._http.build_request(method, path, **kwargs)
            # Streamed, then read here: a body that cannot be decoded (a proxy's broken
            # gzip) raises DecodingError, and the answer's status is still at hand then.
            response = self._http.send(request, stream=True)
            try:
                response.read()
            except httpx.DecodingError as exc:
                raise _undecodable(method, url, response, exc) from None
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise ConnectionFailed(self.config.url, "connection timed out") from None
            raise RequestTimedOut(url, timeout or self.timeout) from None
        except httpx.ConnectError as exc:
            raise ConnectionFailed(self.config.url, _reason(exc)) from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.config.url, _reason(exc)) from None
        data = _decode(method, url, response)
        if shape is not None and not shape(data):
            # JSON, but not what this call answers: another service at the URL. The CLI
            # reads these fields unchecked.
            raise _foreign(method, url, response)
        return data


def _is_app(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("name"), str)


def _is_command_list(data: dict[str, Any]) -> bool:
    commands = data.get("commands")
    return isinstance(commands, list) and all(isinstance(c, dict) for c in commands)


def _is_app_list(data: dict[str, Any]) -> bool:
    apps = data.get("apps")
    return isinstance(apps, list) and all(_is_app(app) for app in apps)


def _is_environment_list(data: dict[str, Any]) -> bool:
    environments = data.get("environments")
    return isinstance(environments, list) and all(isinstance(e, dict) for e in environments)


def _app_path(name: str) -> str:
    # Quoted so that a name with '/' or '?' reaches the server as one (invalid) name.
    return "/api/apps/" + quote(name, safe="")


def _undecodable(
    method: str, url: str, response: httpx.Response, exc: httpx.DecodingError
) -> ApiError:
    encoding = response.headers.get("content-encoding", "no content encoding")
    status = response.status_code
    return ApiError(
        status,
        f"HTTP_{status}",
        f"{method} {url} answered HTTP {status} with a body that cannot be decoded "
        f"(content-encoding {encoding}: {exc}), not the nocosup admin API",
    )


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return text or type(exc).__name__


def _decode(method: str, url: str, response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a 2xx answer; anything else becomes an ApiError."""
    try:
        data = response.json()
    except ValueError:
        data = None
    ok = response.is_success
    if ok and isinstance(data, dict):
        return data
    if not ok and isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        code = str(error.get("code") or f"HTTP_{response.status_code}")
        message = str(error.get("message") or response.reason_phrase)
        raise ApiError(response.status_code, code, message, data)
    raise _foreign(method, url, response)


#: Characters of a foreign answer's body an error message quotes.
EXCERPT = 200


def _foreign(method: str, url: str, response: httpx.Response) -> ApiError:
    """An answer that is not the admin API's (a proxy's error page, another site, an empty
    body): the message says what came back, with the start of its body."""
    status = response.status_code
    kind = response.headers.get("content-type", "").split(";")[0].strip()
    text = " ".join(response.content.decode("utf-8", "replace").split())
    # Quoted text comes from anywhere: no terminal control characters reach stderr.
    text = "".join(c if c.isprintable() else "?" for c in text)
    head = f"{method} {url} answered HTTP {status} with"
    if not text:
        what = f"{head} an empty body" + (f" ({kind})" if kind else "")
        return ApiError(status, f"HTTP_{status}", f"{what}, not the nocosup admin API")
    if len(text) > EXCERPT:
        text = text[: EXCERPT - 3] + "..."
    return ApiError(
        status,
        f"HTTP_{status}",
        f"{head} {kind or 'no content type'}, not the nocosup admin API: {text}",
    )

"""The ``nocosup apps|envs`` CLI against real servers, run as a user runs it: a subprocess
(with a pseudo-terminal where prompts and progress depend on one)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from nocosup import cli
from tests.conftest import REDIS_URL
from tests.servers import ADMIN_TOKEN, ROOT, NocosupServer, ServerFactory, free_port

CLI = [sys.executable, "-m", "nocosup"]


def cli_env(url: str | None, token: str | None = ADMIN_TOKEN) -> dict[str, str]:
    """The caller's environment without NOCOSUP_*, plus the CLI's two variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOCOSUP_")}
    if url is not None:
        env["NOCOSUP_URL"] = url
    if token is not None:
        env["NOCOSUP_ADMIN_TOKEN"] = token
    return env


def run(
    server: NocosupServer | None,
    *args: str,
    token: str | None = ADMIN_TOKEN,
    url: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``nocosup ARGS`` with stdin not a terminal; NOCOSUP_URL carries a trailing slash."""
    if url is None and server is not None:
        url = server.url + "/"
    return subprocess.run(
        [*CLI, *args],
        env=cli_env(url, token),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def failed(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The stderr of a run that must have failed with ``code`` and no traceback."""
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stderr


def rows(table: str) -> list[list[str]]:
    """A printed table as rows of cells (cells never hold two spaces in these tests)."""
    return [[c.strip() for c in line.split("  ") if c.strip()] for line in table.splitlines()]


def on_terminal(
    server: NocosupServer, *args: str, stdin_text: str | None = None
) -> tuple[int, str, str]:
    """Run with a pseudo-terminal as stdin (fed ``stdin_text``) or, without text, as
    stderr. Returns (exit code, stdout, stderr or what the terminal showed)."""
    master, slave = pty.openpty()
    as_stdin = stdin_text is not None
    proc = subprocess.Popen(
        [*CLI, *args],
        env=cli_env(server.url),
        cwd=ROOT,
        stdin=slave if as_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if as_stdin else slave,
        text=True,
    )
    os.close(slave)
    try:
        if as_stdin:
            assert stdin_text is not None
            os.write(master, stdin_text.encode())
            stdout, stderr = proc.communicate(timeout=120)
            return proc.returncode, stdout, stderr
        shown = bytearray()
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        stdout, _ = proc.communicate(timeout=120)
        return proc.returncode, stdout, shown.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def tenant_file(server: NocosupServer, name: str) -> Path:
    return server.storage / "databases" / f"nocosup_app_{name}.sqlite"


# --- round trips --------------------------------------------------------------------------


def test_round_trip_in_tables(sqlite_server: NocosupServer) -> None:
    s = sqlite_server
    assert ok(run(s, "apps", "list")).stdout.startswith("no apps")

    created = ok(
        run(s, "apps", "create", "crm", "--title", "CRM", "--option", 'color="blue"')
    ).stdout
    assert created.splitlines()[0] == "created crm"
    assert "title:          CRM" in created

    table = rows(ok(run(s, "apps", "list")).stdout)
    assert table == [
        ["NAME", "TITLE", "ENVIRONMENTS", "STATUS", "DESIRED"],
        ["crm", "CRM", "local", "local:idle", "running"],
    ]

    shown = ok(run(s, "apps", "show", "crm")).stdout
    fields = dict(line.split(":", 1) for line in shown.splitlines())
    assert {k: v.strip() for k, v in fields.items() if k not in ("created", "updated")} == {
        "name": "crm",
        "title": "CRM",
        "template": "(default)",
        "environments": "local",
        "status": "local:idle",
        "desired state": "running",
        "last seen": "-",
        "start mode": "on_first_request",
        "db conn type": "new_database",
        "database": "name=nocosup_app_crm",
        "options": '{"color": "blue"}',
        "domains": "-",
        "version": "1",
    }

    started = ok(run(s, "apps", "start", "crm"))
    assert started.stdout == "crm started: local:running\n"
    # not a terminal: plain lines, the last one the final status
    progress = started.stderr.splitlines()
    assert progress[0] == "starting crm"
    assert progress[-1] == "  local: running"
    assert all(line.startswith("  local: ") for line in progress[1:])
    assert rows(ok(run(s, "apps", "list")).stdout)[1][3] == "local:running"

    stopped = ok(run(s, "apps", "stop", "crm"))
    assert stopped.stdout == "crm stopped: local:stopped\n"
    assert stopped.stderr.splitlines()[0] == "stopping crm"
    assert stopped.stderr.splitlines()[-1] == "  local: stopped"
    assert rows(ok(run(s, "apps", "list")).stdout)[1][3:] == ["local:stopped", "stopped"]

    envs = rows(ok(run(s, "envs", "list")).stdout)
    assert envs[0] == ["NAME", "STATUS", "VERSION", "URL", "INSTANCES", "LAST HEARTBEAT"]
    assert envs[1][:5] == ["local", "online", "0.1.0", "-", "1"]

    assert ok(run(s, "apps", "rm", "crm", "--yes")).stdout == "removed crm (database kept)\n"
    assert tenant_file(s, "crm").exists()
    assert ok(run(s, "apps", "list")).stdout.startswith("no apps")


def test_round_trip_in_json(sqlite_server: NocosupServer) -> None:
    s = sqlite_server

    def as_json(*args: str) -> Any:
        proc = ok(run(s, *args, "--json"))
        assert proc.stderr == ""  # no progress, no tables
        return json.loads(proc.stdout)

    app = as_json(
        "apps",
        "create",
        "shop",
        "--env",
        "local",
        "--start-mode",
        "on_first_request",
        "--db-conn-type",
        "new_database",
        "--option",
        "size=3",
        "--option",
        'tags=["a", "b"]',
    )
    assert app["name"] == "shop" and app["title"] == "shop"
    assert app["environments"] == ["local"]
    assert app["options"] == {
        "size": 3,
        "tags": ["a", "b"],
        "startMode": "on_first_request",
        "dbConnType": "new_database",
    }
    assert app["statuses"] == {"local": "idle"} and app["errors"] == {}

    assert [a["name"] for a in as_json("apps", "list")["apps"]] == ["shop"]
    assert as_json("apps", "show", "shop")["options"]["size"] == 3

    started = as_json("apps", "start", "shop")
    assert started["statuses"] == {"local": "running"}
    assert started["results"] == {"local": {"ok": True, "status": "running", "error": None}}

    stopped = as_json("apps", "stop", "shop")
    assert stopped["statuses"] == {"local": "stopped"}
    assert stopped["desired_state"] == "stopped"

    envs = as_json("envs", "list")["environments"]
    assert [e["name"] for e in envs] == ["local"] and envs[0]["status"] == "online"

    removed = as_json("apps", "rm", "shop", "--yes", "--drop-database")
    assert removed["removed"] is True and removed["database_dropped"] is True
    assert not tenant_file(s, "shop").exists()
    assert as_json("apps", "list") == {"apps": [], "total": 0}


# --- failures the server reports ----------------------------------------------------------


def test_failing_start_exits_1_with_the_reason(sqlite_server: NocosupServer) -> None:
    s = sqlite_server
    ok(run(s, "apps", "create", "boom", "--option", 'test={"crash": "lifespan"}'))

    stderr = failed(run(s, "apps", "start", "boom"))
    # The server's message embeds the app's traceback: the CLI prints its gist.
    assert (
        "nocosup: application 'boom' did not start: local: LifespanError: "
        "RuntimeError: lifespan exploded on purpose (COMMAND_FAILED)"
    ) in stderr
    assert "  local: error: LifespanError: RuntimeError: lifespan exploded on purpose" in stderr

    proc = run(s, "apps", "start", "boom", "--json")
    failed(proc)
    body = json.loads(proc.stdout)["error"]
    assert body["code"] == "COMMAND_FAILED"
    assert body["results"]["local"]["ok"] is False
    assert "lifespan exploded on purpose" in body["results"]["local"]["error"]

    shown = ok(run(s, "apps", "show", "boom")).stdout
    assert "status:         local:error" in shown
    assert "RuntimeError: lifespan exploded on purpose" in shown.split("errors:", 1)[1]


def test_create_that_fails_to_start_says_the_app_exists(sqlite_server: NocosupServer) -> None:
    s = sqlite_server
    stderr = failed(
        run(
            s,
            "apps",
            "create",
            "eager",
            "--start-mode",
            "with_supervisor",
            "--option",
            'test={"crash": "factory"}',
        )
    )
    assert "did not start: local: RuntimeError: factory exploded on purpose" in stderr
    assert "eager was created but did not start" in stderr
    assert rows(ok(run(s, "apps", "list")).stdout)[1][:4] == [
        "eager",
        "eager",
        "local",
        "local:error",
    ]


def test_unknown_app_is_app_not_found(sqlite_server: NocosupServer) -> None:
    for args in (
        ["apps", "show", "ghost"],
        ["apps", "start", "ghost"],
        ["apps", "stop", "ghost"],
        ["apps", "rm", "ghost", "--yes"],
    ):
        stderr = failed(run(sqlite_server, *args))
        assert stderr.splitlines()[-1] == (
            "nocosup: application 'ghost' does not exist (APP_NOT_FOUND)"
        ), args
    proc = run(sqlite_server, "apps", "show", "ghost", "--json")
    failed(proc)
    assert json.loads(proc.stdout)["error"]["code"] == "APP_NOT_FOUND"


def test_invalid_input_shows_the_servers_message(sqlite_server: NocosupServer) -> None:
    stderr = failed(run(sqlite_server, "apps", "create", "Bad"))
    assert "name must start with a lowercase letter" in stderr
    assert stderr.rstrip().endswith("(VALIDATION_ERROR)")
    stderr = failed(run(sqlite_server, "apps", "create", "x", "--env", "mars"))
    assert "environment 'mars' is not registered" in stderr
    ok(run(sqlite_server, "apps", "create", "twice"))
    assert "(APP_EXISTS)" in failed(run(sqlite_server, "apps", "create", "twice"))


def test_wrong_token_prints_the_401_message(sqlite_server: NocosupServer) -> None:
    stderr = failed(run(sqlite_server, "apps", "list", token="wrong"))
    assert stderr.splitlines() == [
        "nocosup: missing or wrong admin token: send 'Authorization: Bearer <token>' "
        "(UNAUTHORIZED)",
        "  check NOCOSUP_ADMIN_TOKEN or --token",
    ]


def test_flags_win_over_the_environment(sqlite_server: NocosupServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc = run(
        None,
        "apps",
        "list",
        "--url",
        sqlite_server.url + "/",
        "--token",
        ADMIN_TOKEN,
        url=dead,
        token="wrong",
    )
    assert ok(proc).stdout.startswith("no apps")
    # and the environment alone is used when no flag is given
    assert "cannot connect to " + dead in failed(run(None, "apps", "list", url=dead))


# --- failures before or without a server --------------------------------------------------


def test_server_down_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    stderr = failed(run(None, "envs", "list", url=url + "/"))
    assert stderr == (
        f"nocosup: cannot connect to {url} (connection refused); is 'nocosup serve' running "
        "there? set NOCOSUP_URL or pass --url\n"
    )


def test_missing_token_says_how_to_set_it() -> None:
    stderr = failed(run(None, "apps", "list", url="http://127.0.0.1:1", token=None), code=2)
    assert "no admin token: set NOCOSUP_ADMIN_TOKEN or pass --token" in stderr
    assert "storage/admin_token" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: command"),
        (["apps"], "the following arguments are required: action"),
        (["apps", "create"], "the following arguments are required: name"),
        (["apps", "create", "x", "--start-mode", "never"], "invalid choice: 'never'"),
        (["apps", "start", "x", "--timeout", "0"], "must be more than 0"),
        (["apps", "stop", "x", "--timeout", "soon"], "not a number: 'soon'"),
        (["apps", "list", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["apps", "create", "x", "--option", "color"], "expected KEY=JSON_VALUE"),
        (["apps", "create", "x", "--option", "color=blue"], "the value must be JSON"),
        (["apps", "create", "x", "--option", "a=1", "--option", "a=2"], "given twice"),
        (
            ["apps", "create", "x", "--start-mode", "with_supervisor", "--option", 'startMode="x"'],
            "contradicts --option startMode",
        ),
        (["apps", "list", "--url", "localhost:8000"], "--url must be an http:// or https:// URL"),
    ],
)
def test_bad_usage_exits_2(args: list[str], message: str) -> None:
    # Nothing listens at the URL: each of these must fail before any request.
    stderr = failed(run(None, *args, url=f"http://127.0.0.1:{free_port()}"), code=2)
    assert message in stderr


def test_bad_url_in_the_environment_names_the_variable() -> None:
    stderr = failed(run(None, "envs", "list", url="ftp://example.org"), code=2)
    assert "NOCOSUP_URL must be an http:// or https:// URL" in stderr


# --- rm confirmation ----------------------------------------------------------------------


def test_rm_without_yes_on_non_interactive_stdin_is_refused(sqlite_server: NocosupServer) -> None:
    ok(run(sqlite_server, "apps", "create", "keep"))
    stderr = failed(run(sqlite_server, "apps", "rm", "keep"), code=2)
    assert "refusing to remove keep without confirmation" in stderr
    assert "--yes" in stderr
    assert "keep" in ok(run(sqlite_server, "apps", "show", "keep")).stdout


def test_rm_asks_on_a_terminal(sqlite_server: NocosupServer) -> None:
    s = sqlite_server
    ok(run(s, "apps", "create", "asked"))

    code, _, stderr = on_terminal(s, "apps", "rm", "asked", stdin_text="n\n")
    assert code == 1 and "remove asked (its database is kept)? [y/N]" in stderr
    assert "not removed" in stderr
    # dropping the database wants the name typed back; a plain "y" is not enough
    code, _, stderr = on_terminal(s, "apps", "rm", "asked", "--drop-database", stdin_text="y\n")
    assert code == 1 and "type the app's name" in stderr
    assert tenant_file(s, "asked").exists()

    code, stdout, _ = on_terminal(s, "apps", "rm", "asked", "--drop-database", stdin_text="asked\n")
    assert code == 0 and stdout == "removed asked and dropped its database\n"
    assert not tenant_file(s, "asked").exists()

    # an unknown app fails before the question
    code, _, stderr = on_terminal(s, "apps", "rm", "ghost", stdin_text="y\n")
    assert code == 1 and "(APP_NOT_FOUND)" in stderr and "[y/N]" not in stderr


# --- progress -----------------------------------------------------------------------------


def test_progress_on_a_terminal_redraws_one_line(sqlite_server: NocosupServer) -> None:
    s = sqlite_server
    ok(run(s, "apps", "create", "slow", "--option", 'test={"bootDelay": 1}'))
    code, stdout, shown = on_terminal(s, "apps", "start", "slow")
    assert code == 0 and stdout == "slow started: local:running\n"
    # one line rewritten in place ('\r' + erase), cleared at the end: no line per status
    assert "\r\x1b[K" in shown and "starting slow" in shown
    assert "\n" not in shown and shown.endswith("\r\x1b[K")


def test_start_gives_up_after_the_timeout(sqlite_server: NocosupServer) -> None:
    s = sqlite_server
    ok(run(s, "apps", "create", "sleepy", "--option", 'test={"bootDelay": 5}'))
    stderr = failed(run(s, "apps", "start", "sleepy", "--timeout", "0.3"))
    assert "nocosup: gave up waiting after 0.3 s for sleepy to start" in stderr
    assert "the server carries on: see 'nocosup apps show sleepy'" in stderr


# --- pieces -------------------------------------------------------------------------------


def test_in_process_main_prints_and_returns_the_exit_code(
    sqlite_server: NocosupServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOCOSUP_URL", sqlite_server.url)
    monkeypatch.setenv("NOCOSUP_ADMIN_TOKEN", ADMIN_TOKEN)
    assert cli.main(["apps", "show", "nope"]) == 1
    assert capsys.readouterr().err == "nocosup: application 'nope' does not exist (APP_NOT_FOUND)\n"
    assert cli.main(["envs", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["environments"][0]["name"] == "local"


def test_helpers() -> None:
    from nocosup.validation import START_MODES

    assert cli.START_MODES == START_MODES
    app = {"environments": ["env_a", "env_b"], "statuses": {"env_b": "stopped", "env_a": "running"}}
    assert cli.statuses_text(app) == "env_a:running env_b:stopped"
    assert cli.table(["A", "LONG"], [["wide cell", "x"], ["y", ""]]) == (
        "A          LONG\nwide cell  x\ny"
    )
    traceback = (
        'LifespanError: Traceback (most recent call last):\n  File "x.py", line 1, in f\n'
        "    raise RuntimeError('no')\nRuntimeError: no\n"
    )
    assert cli.gist(traceback) == "LifespanError: RuntimeError: no"
    assert cli.gist("OSError: disk\nfull") == "OSError: disk full"
    assert cli.gist(None) == ""


# --- bad input the CLI must explain (trust-boundary issue, smaller findings) -----------------


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_serve_refuses_a_port_out_of_range(port: str) -> None:
    err = failed(run(None, "serve", "--port", port), 2)
    assert "--port" in err


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("1e999", "out of range"),
        ("NaN", "NaN and Infinity"),
        ("9" * 5000, "too long"),
        ('"\\ud800"', "lone surrogate"),
        ("[" * 40 + "]" * 40, "deeper than 32"),
    ],
)
def test_create_refuses_option_values_that_are_not_strict_json(value: str, words: str) -> None:
    # refused before any request: the URL need not answer
    err = failed(
        run(None, "apps", "create", "x", "--option", f"n={value}", url="http://127.0.0.1:1"), 2
    )
    assert words in err and "--option n" in err


@pytest.mark.parametrize("token", ["tökén", "a\x01b"])
def test_a_token_that_cannot_travel_in_a_header_is_a_usage_error(token: str) -> None:
    err = failed(run(None, "apps", "list", token=token, url="http://127.0.0.1:1"), 2)
    assert "NOCOSUP_ADMIN_TOKEN must be printable ASCII" in err
    err = failed(run(None, "apps", "list", "--token", token, url="http://127.0.0.1:1"), 2)
    assert "--token must be printable ASCII" in err


def test_serve_explains_an_unusable_storage_dir(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    unusable = [afile, afile / "storage"]
    if os.geteuid() == 0:
        unusable.append(Path("/sys/nocosup-storage-test"))  # a read-only filesystem
    else:
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o500)
        unusable.append(readonly)
    for storage in unusable:
        env = {**cli_env(None), "NOCOSUP_STORAGE_DIR": str(storage)}
        proc = subprocess.run(
            [*CLI, "serve", "--port", str(free_port())],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        err = failed(proc, 2)
        assert "NOCOSUP_STORAGE_DIR" in err and str(storage) in err
        assert len(err.strip().splitlines()) == 1, err


# --- serve: the factory from the current directory, logging in every replica -------------

TENANTS_PY = """
async def build(ctx):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"from tenants.py: " + ctx.name.encode()})
    return app
"""


def test_serve_imports_the_factory_from_the_current_directory(
    servers: ServerFactory, tmp_path: Path
) -> None:
    """The installed ``nocosup`` script (not ``python -m``, which puts the current
    directory on sys.path itself) finds ./tenants.py, as uvicorn would."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "tenants.py").write_text(TENANTS_PY)
    script = Path(sys.executable).parent / "nocosup"
    port = free_port()
    env = servers.env(NOCOSUP_APP_FACTORY="tenants:build")
    env.pop("PYTHONPATH")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(script), "serve", "--port", str(port)],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, url, log)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = httpx.post(url + "/api/apps", json={"name": "mine"}, headers=headers)
        assert r.status_code == 201, r.text
        assert httpx.get(url + "/apps/mine/").text == "from tenants.py: mine"
    finally:
        proc.terminate()
        proc.wait(20)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"never ready: {log.read_text()}")


def test_every_replica_logs_nocosup_lines(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    """``--workers 2``: each replica logs its own start-up line (nocosup.host, INFO),
    with its own instance id."""
    port = free_port()
    worker = servers.start(
        port=port,
        replicas=2,
        ENVIRONMENT_URL=f"http://127.0.0.1:{port}",
        **pg_env,
        APP_MODE="worker",
        APP_DISCOVERY_ADAPTER="remote",
        APP_SUPERVISOR_REDIS_URL=REDIS_URL,
        APP_COMMAND_ADAPTER="redis",
        NOCOSUP_REDIS_PREFIX=f"{redis_prefix}:replicas",
        ENVIRONMENT_NAME="env_r",
    )

    def started() -> list[str]:
        return [line for line in worker.tail(400).splitlines() if "started as worker" in line]

    for _ in range(400):
        if len(started()) == 2:
            break
        time.sleep(0.05)
    lines = started()
    assert len(lines) == 2, worker.tail(400)
    assert all(" INFO nocosup.host: " in line for line in lines)
    instances = {line.rsplit("instance ", 1)[1] for line in lines}
    assert len(instances) == 2


def test_domains_from_the_cli(sqlite_server: NocosupServer) -> None:
    s = sqlite_server
    ok(run(s, "apps", "create", "crm", "--domain", "CRM.example.com", "--domain", "c.test"))
    assert ok(run(s, "apps", "domains", "crm")).stdout == "crm.example.com\nc.test\n"
    shown = ok(run(s, "apps", "show", "crm")).stdout
    assert "\ndomains:        crm.example.com, c.test\n" in shown
    assert ok(run(s, "apps", "domains", "crm", "--set", "x.test")).stdout == "x.test\n"
    ok(run(s, "apps", "create", "shop"))
    err = failed(run(s, "apps", "domains", "shop", "--set", "x.test"))
    assert "domain 'x.test' belongs to application 'crm' (DOMAIN_TAKEN)" in err
    err = failed(run(s, "apps", "domains", "shop", "--set", "x.test:80"))
    assert "(VALIDATION_ERROR)" in err and "no port" in err
    assert ok(run(s, "apps", "domains", "crm", "--clear")).stdout == "crm has no domains\n"
    assert "contradict" in failed(run(s, "apps", "domains", "crm", "--clear", "--set", "a.b"), 2)
    ok(run(s, "apps", "domains", "shop", "--set", "x.test"))


def test_serving_does_not_load_the_http_client() -> None:
    """httpx (with rich, when installed) costs about 90 ms and 4-5 MiB of every process
    that imports it; only the commands that talk to a server need it."""
    code = (
        "import sys, nocosup.cli, nocosup.host, nocosup.server, nocosup.fastpath;"
        "print(sorted(m for m in ('httpx', 'rich') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout

"""The documentation keeps up with the code (datasette's approach): every hook, every
environment variable, every route and every error code has its place in docs/, the code
reads no environment variable that is not declared, and the Kubernetes example of the
deployment page is a configuration nocosup accepts."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from starlette.routing import Mount, Route

from nocosup import errors, hookspecs
from nocosup.config import VARIABLES, Settings
from nocosup.host import Host

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCANNED = ("nocosup", "plugins")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


# --- markdown helpers -------------------------------------------------------------------


def headings(page: str) -> list[tuple[int, str, str]]:
    """(level, title, body up to the next heading of that level or above) of every heading
    of ``docs/<page>``, fenced code blocks excluded."""
    found: list[tuple[int, str, int]] = []
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    fenced = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            found.append((len(match.group(1)), match.group(2), i))
    out = []
    for n, (level, title, start) in enumerate(found):
        end = next((s for lv, _t, s in found[n + 1 :] if lv <= level), len(lines))
        out.append((level, title, "\n".join(lines[start + 1 : end])))
    return out


def h3_sections(page: str) -> dict[str, str]:
    return {title: body for level, title, body in headings(page) if level == 3}


def code_blocks(page: str, language: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


# --- hooks ------------------------------------------------------------------------------


def hook_specs() -> dict[str, list[str]]:
    """Every hook of nocosup/hookspecs.py with its argument names, in order."""
    return {
        name: list(inspect.signature(func).parameters)
        for name, func in vars(hookspecs).items()
        if inspect.isfunction(func) and hasattr(func, "nocosup_spec")
    }


def test_hookspecs_are_found() -> None:
    assert {"startup", "app_factory", "select_environment"} <= set(hook_specs())


@pytest.mark.parametrize("hook", sorted(hook_specs()))
def test_every_hook_has_a_heading_with_its_arguments(hook: str) -> None:
    expected = f"{hook}({', '.join(hook_specs()[hook])})"
    titles = set(h3_sections("plugins.md"))
    assert expected in titles, f"docs/plugins.md needs a heading '### {expected}'"


def test_plugins_page_documents_no_missing_hook() -> None:
    specs = hook_specs()
    call = re.compile(r"^(\w+)\((.*)\)$")
    for title in h3_sections("plugins.md"):
        match = call.match(title)
        if match:
            assert match.group(1) in specs, f"'### {title}' documents a hook that does not exist"


# --- environment variables --------------------------------------------------------------


@pytest.mark.parametrize("variable", VARIABLES, ids=lambda v: v.name)
def test_every_variable_has_a_heading(variable: Any) -> None:
    sections = h3_sections("configuration.md")
    assert variable.name in sections, f"docs/configuration.md needs '### {variable.name}'"
    body = sections[variable.name]
    if variable.default is None:
        default = "- Default: unset"
    elif variable.default == "":
        default = "- Default: empty"
    else:
        default = f"- Default: `{variable.default}`"
    assert any(line.startswith(default) for line in body.splitlines()), (
        f"### {variable.name}: expected a line starting with {default!r}"
    )
    allowed = next((line for line in body.splitlines() if line.startswith("- Allowed:")), "")
    for choice in variable.choices:
        assert f"`{choice}`" in allowed, f"### {variable.name}: '- Allowed:' misses {choice!r}"
    assert any(line.startswith("- Example: ") for line in body.splitlines())


def test_configuration_page_documents_no_unknown_variable() -> None:
    names = {v.name for v in VARIABLES}
    for title in h3_sections("configuration.md"):
        if re.fullmatch(r"[A-Z][A-Z0-9_]+", title):
            assert title in names, f"'### {title}' is not in nocosup.config.VARIABLES"


def environment_reads(source: str) -> tuple[set[str], list[str]]:
    """Names of the environment variables ``source`` reads, and the reads whose name it
    cannot tell (a name that is neither a string literal nor a module-level constant).

    A read is ``os.getenv(X)``, ``getenv(X)``, ``<...>environ.get/setdefault/pop(X)``,
    ``<...>environ[X]`` or ``X in <...>environ``.
    """
    tree = ast.parse(source)
    constants: dict[str, str] = {}
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            constants.update({t.id: value.value for t in targets if isinstance(t, ast.Name)})

    def is_environ(expr: ast.expr) -> bool:
        text = ast.unparse(expr)
        return text == "environ" or text.endswith(".environ")

    names: set[str] = set()
    unresolved: list[str] = []
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Name) and func.id == "getenv":
                key = node.args[0]
            elif isinstance(func, ast.Attribute):
                if func.attr == "getenv" and ast.unparse(func.value) == "os":
                    key = node.args[0]
                elif func.attr in ("get", "setdefault", "pop") and is_environ(func.value):
                    key = node.args[0]
        elif isinstance(node, ast.Subscript) and is_environ(node.value):
            key = node.slice
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            key = node.left
        if key is None:
            continue
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
        elif isinstance(key, ast.Name) and key.id in constants:
            names.add(constants[key.id])
        else:
            unresolved.append(ast.unparse(node))
    return names, unresolved


def test_the_environment_scanner_finds_every_kind_of_read() -> None:
    source = (
        "import os\n"
        "from os import environ, getenv\n"
        'NAME = "B"\n'
        'os.environ.get("A")\n'
        "environ[NAME]\n"
        'getenv("C")\n'
        '"D" in os.environ\n'
        'os.getenv("E", "x")\n'
        'self.environ.setdefault("F", "1")\n'
        "os.environ.get(key)\n"
    )
    names, unresolved = environment_reads(source)
    assert names == {"A", "B", "C", "D", "E", "F"}
    assert unresolved == ["os.environ.get(key)"]


def test_code_reads_only_declared_variables() -> None:
    """A variable read anywhere in nocosup/ or plugins/ must be declared in VARIABLES
    (and so documented); config.py's generic access by name is not a read of its own."""
    declared = {v.name for v in VARIABLES}
    undeclared: dict[str, set[str]] = {}
    unresolved: dict[str, list[str]] = {}
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            names, opaque = environment_reads(path.read_text(encoding="utf-8"))
            where = str(path.relative_to(ROOT))
            if names - declared:
                undeclared[where] = names - declared
            if opaque:
                unresolved[where] = opaque
    assert not undeclared, f"declare these in nocosup.config.VARIABLES: {undeclared}"
    assert not unresolved, f"environment reads whose variable cannot be checked: {unresolved}"


# --- HTTP API ---------------------------------------------------------------------------


def _hosts(tmp_path: Path) -> list[Host]:
    common = {"storage_dir": tmp_path, "load_plugins": (), "admin_token": "x"}
    supervisor = Settings(**common)
    worker = Settings(
        mode="worker",
        discovery_adapter="remote",
        command_adapter="redis",
        supervisor_redis_url="redis://127.0.0.1:6379/0",
        environment_url="http://127.0.0.1:9",
        **common,
    )
    supervisor.validate()
    worker.validate()
    return [Host(supervisor), Host(worker)]


def documented_routes() -> set[str]:
    pattern = re.compile(rf"^({'|'.join(_HTTP_METHODS)}) (/\S*)$")
    return {title for title in h3_sections("http-api.md") if pattern.match(title)}


def test_every_route_of_the_host_is_documented(tmp_path: Path) -> None:
    documented = documented_routes()
    wanted: set[str] = set()
    for host in _hosts(tmp_path):
        for route in host.routes:
            if isinstance(route, Route):
                for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                    wanted.add(f"{method} {route.path}")
            elif isinstance(route, Mount):
                prefix = f"GET {route.path}/"
                match = [d for d in documented if d.startswith(prefix)]
                assert match, f"docs/http-api.md needs a heading '### {prefix}...' for the mount"
                wanted.update(match)
            else:
                raise AssertionError(f"teach this test to document {route!r}")
    missing = sorted(wanted - documented)
    assert not missing, f"docs/http-api.md needs these '### METHOD path' headings: {missing}"
    stale = sorted(documented - wanted)
    assert not stale, f"docs/http-api.md documents routes the host does not serve: {stale}"


def test_every_error_code_is_documented() -> None:
    page = (DOCS / "http-api.md").read_text(encoding="utf-8")
    classes = [
        cls
        for cls in vars(errors).values()
        if inspect.isclass(cls) and issubclass(cls, errors.NocosupError)
    ]
    codes = {cls.code for cls in classes} | {"INVALID_JSON"}
    for code in sorted(codes):
        assert f"`{code}`" in page, f"docs/http-api.md does not mention error code {code}"
    for cls in classes:
        if cls is not errors.ConfigError:
            row = re.search(rf"^\| {cls.status} \| `{cls.code}` \|", page, re.M)
            assert row, f"the error table needs a row '| {cls.status} | `{cls.code}` |'"


# --- the Kubernetes example -------------------------------------------------------------


def kubernetes_objects() -> list[dict[str, Any]]:
    blocks = [b for b in code_blocks("deployment.md", "yaml") if "kind: Deployment" in b]
    assert len(blocks) == 1, "expected one Kubernetes manifest in docs/deployment.md"
    return [doc for doc in yaml.safe_load_all(blocks[0]) if doc]


def _named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _container_env(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    config_maps = _named(objects, "ConfigMap")
    secrets = _named(objects, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]]["stringData"][ref["key"]]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = f"{deployment['metadata']['name']}-5d9c6b7f4-x2x9z"
    return env


def test_kubernetes_example_is_a_valid_deployment() -> None:
    objects = kubernetes_objects()
    deployments = _named(objects, "Deployment")
    services = _named(objects, "Service")
    known = {v.name for v in VARIABLES}
    roles: dict[str, list[str]] = {"supervisor": [], "worker": []}
    for name, deployment in deployments.items():
        env = _container_env(objects, deployment)
        assert set(env) <= known, f"{name}: unknown variables {set(env) - known}"
        settings = Settings.from_env(env)
        roles[settings.mode].append(name)
        pod = deployment["spec"]["template"]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= pod["metadata"]["labels"].items()
        )
        (container,) = pod["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        if settings.mode == "supervisor":
            assert deployment["spec"]["replicas"] >= 2
            continue
        # the worker's proxy URL is a Service of the manifest that selects this worker's pods
        url = urlparse(settings.proxy_url or "")
        service = services[(url.hostname or "").split(".")[0]]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert (url.port or 80) in [p["port"] for p in service["spec"]["ports"]]
    assert len(roles["supervisor"]) == 1 and len(roles["worker"]) >= 2, roles


def test_kubernetes_supervisors_roll_without_an_outage() -> None:
    objects = kubernetes_objects()
    for name, deployment in _named(objects, "Deployment").items():
        settings = Settings.from_env(_container_env(objects, deployment))
        if settings.mode != "supervisor":
            continue
        assert deployment["spec"]["replicas"] >= 2, name
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", name
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, name
        assert strategy["rollingUpdate"]["maxSurge"] >= 1, name


def test_kubernetes_every_deployment_has_a_disruption_budget_for_its_pods() -> None:
    objects = kubernetes_objects()
    budgets = _named(objects, "PodDisruptionBudget")
    for name, deployment in _named(objects, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"].items()
        selecting = [
            budget
            for budget in budgets.values()
            if budget["spec"]["selector"]["matchLabels"].items() <= labels
        ]
        assert len(selecting) == 1, f"{name}: {len(selecting)} budgets select its pods"
        (spec,) = (budget["spec"] for budget in selecting)
        # maxUnavailable 1: one pod at a time, and never a blocked drain of a 1-replica env
        assert spec.get("maxUnavailable") == 1, name
    # no budget selects pods of more than one Deployment (or none)
    for budget_name, budget in budgets.items():
        wanted = budget["spec"]["selector"]["matchLabels"].items()
        owners = [
            d
            for d in _named(objects, "Deployment").values()
            if wanted <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(owners) == 1, budget_name


SECRET_VARIABLES = ("NOCOSUP_ADMIN_TOKEN", "NOCOSUP_CLUSTER_SECRET", "DB_PASSWORD")


def _image_storage_dir() -> str:
    """NOCOSUP_STORAGE_DIR as compose/Dockerfile sets it (the manifest runs that image)."""
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    (value,) = re.findall(r"^ENV .*\bNOCOSUP_STORAGE_DIR=(\S+)", dockerfile, re.M)
    return str(value)


def test_kubernetes_containers_are_bounded_unprivileged_and_read_only() -> None:
    objects = kubernetes_objects()
    for name, deployment in _named(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), where
            security = {**pod.get("securityContext", {}), **container["securityContext"]}
            assert security["runAsNonRoot"] is True, where
            assert security["runAsUser"] != 0, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert security["seccompProfile"]["type"] == "RuntimeDefault", where
            # what must stay writable is an emptyDir: the storage directory and /tmp
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            env = _container_env(objects, deployment)
            storage = env.get("NOCOSUP_STORAGE_DIR", _image_storage_dir())
            for path in (storage, "/tmp"):
                assert path in mounts, f"{where}: nothing writable at {path}"
                assert "emptyDir" in volumes[mounts[path]], f"{where}: {path}"
            # tokens and the cluster secret come from Secrets, never from plain values
            for item in container.get("env", []):
                if item["name"] in SECRET_VARIABLES:
                    assert "secretKeyRef" in item["valueFrom"], f"{where}: {item['name']}"
            assert container["startupProbe"]["httpGet"]["path"] == "/healthz", where


def test_kubernetes_termination_grace_covers_the_drain() -> None:
    objects = kubernetes_objects()
    for name, deployment in _named(objects, "Deployment").items():
        settings = Settings.from_env(_container_env(objects, deployment))
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        command = pre_stop.get("command", [])
        sleep = float(command[1]) if command[:1] == ["sleep"] else 0.0
        # preStop, then uvicorn waits stop_grace + 5 for requests in flight, then the
        # apps stop (all at once), each waiting up to stop_grace for its own requests
        needed = sleep + (settings.stop_grace + 5) + settings.stop_grace
        assert pod["terminationGracePeriodSeconds"] >= needed, name

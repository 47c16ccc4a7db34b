"""The deployment examples under deploy/, parsed and checked against the configuration they ship.

No cluster, container engine or systemd runs here: each file is read with a real parser
(PyYAML, configparser, tomllib), its configuration is loaded by the proxy's own loader, and
ports, paths, probes, grace periods and secrets are cross-checked between the pieces.
"""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography.fernet import Fernet

from proxy.app import create_app, create_ops_app
from proxy.config import Settings, parse

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"nmbrs-proxy:{VERSION}"
IMAGE_UID = 10001  # the Dockerfile's nmbrs-proxy user


def app_routes() -> set[str]:
    app = create_app(Settings())
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


def ops_routes() -> set[str]:
    """What the ops listener serves (server.ops_port): probes and metrics only."""
    ops = create_ops_app(create_app(Settings()))
    return {r.resource.canonical for r in ops.router.routes() if r.resource is not None}


def env_references(data: Any) -> set[str]:
    """Every NAME in an "env:NAME" value anywhere in a decoded TOML document."""
    if isinstance(data, Mapping):
        return set().union(*(env_references(v) for v in data.values())) if data else set()
    if isinstance(data, list):
        return set().union(*(env_references(v) for v in data)) if data else set()
    if isinstance(data, str) and data.startswith("env:"):
        return {data.removeprefix("env:")}
    return set()


def load_config(text: str, provided: set[str]) -> tuple[Settings, dict[str, Any]]:
    """The proxy's own loader on a shipped config; every env: reference must be provided."""
    data = tomllib.loads(text)
    return settings_of(data, provided), data


def settings_of(
    data: Mapping[str, Any], provided: set[str], values: Mapping[str, str] | None = None
) -> Settings:
    """`data` parsed with every variable in `provided` set (to `values[name]`, if given)."""
    missing = env_references(data) - provided
    assert not missing, f"the deployment does not provide {sorted(missing)}"
    environ = {name: f"{name}-value" for name in provided} | dict(values or {})
    return parse(data, base_dir=ROOT, environ=environ)


def test_every_file_under_deploy_is_checked_here() -> None:
    checked = {
        "kubernetes/nmbrs-proxy.yaml", "kubernetes/redis.yaml",
        "compose/compose.yaml", "compose/config.toml",
        "systemd/nmbrs-proxy.service", "systemd/nmbrs-proxy.socket", "systemd/config.toml",
        "systemd/nmbrs-proxy.env.example",
    }  # fmt: skip
    present = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file()}
    assert present == checked


# --- Kubernetes -------------------------------------------------------------------------------


def k8s(name: str) -> list[dict[str, Any]]:
    with (DEPLOY / "kubernetes" / name).open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def kind(docs: list[dict[str, Any]], wanted: str) -> Iterator[dict[str, Any]]:
    return (doc for doc in docs if doc["kind"] == wanted)


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    (deployment,) = kind(k8s("nmbrs-proxy.yaml"), "Deployment")
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod["initContainers"] if c["name"] == "nmbrs-proxy"]
    (proxy,) = found
    return proxy


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def k8s_settings(pod: dict[str, Any], sidecar: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
    env = container_env(sidecar)
    config_path = Path(env["NMBRS_PROXY_CONFIG"]["value"])
    (mount,) = [m for m in sidecar["volumeMounts"] if config_path.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (config_map,) = [
        doc for doc in kind(k8s("nmbrs-proxy.yaml"), "ConfigMap")
        if doc["metadata"]["name"] == volume["configMap"]["name"]
    ]
    data = tomllib.loads(config_map["data"][str(config_path.relative_to(mount["mountPath"]))])
    assert data["store"]["backend"] == "redis"
    assert data["store"]["url"] == "env:REDIS_URL"
    assert {"REDIS_URL", "NMBRS_PROXY_STORE_KEY"} <= set(env)
    key = Fernet.generate_key().decode()  # what the header's command makes
    settings = settings_of(data, set(env), values={"REDIS_URL": k8s_redis_url(),
                                                   "NMBRS_PROXY_STORE_KEY": key})
    assert settings.store.url == k8s_redis_url()
    assert settings.store.encryption_key is not None  # tokens are encrypted in Redis
    return settings, data


def k8s_redis_url() -> str:
    """The REDIS_URL the manifest's header puts in the Secret."""
    header = (DEPLOY / "kubernetes" / "nmbrs-proxy.yaml").read_text()
    match = re.search(r"--from-literal=REDIS_URL=(\S+)", header)
    assert match is not None
    return match.group(1)


def test_k8s_the_sidecar_runs_the_image_with_its_config(
    pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    settings, _ = k8s_settings(pod, sidecar)
    assert sidecar["image"] == IMAGE
    assert sidecar["args"] == ["serve"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: outlives the app
    assert sidecar["securityContext"]["runAsUser"] == IMAGE_UID
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    (port,) = sidecar["ports"]  # only the ops listener is on the pod's address
    assert port["containerPort"] == settings.server.ops_port
    assert settings.server.host == "127.0.0.1"  # the proxy itself: the pod's loopback
    assert settings.server.ops_host == "0.0.0.0"
    secrets = {name for name, item in container_env(sidecar).items() if "valueFrom" in item}
    assert secrets >= {"NMBRS_CLIENT_SECRET", "NMBRS_SUBSCRIPTION_KEY", "REDIS_URL"}
    for name in secrets:
        assert container_env(sidecar)[name]["valueFrom"]["secretKeyRef"]["key"] == name


def test_k8s_probes_hit_routes_the_proxy_serves(
    pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    settings, _ = k8s_settings(pod, sidecar)
    routes = ops_routes()
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    expected = {
        "startupProbe": "/_proxy/healthz",
        "livenessProbe": "/_proxy/healthz",
        "readinessProbe": "/_proxy/readyz",
    }
    for probe, path in expected.items():
        get = sidecar[probe]["httpGet"]
        assert get["path"] == path
        assert get["path"] in routes
        assert ports.get(get["port"], get["port"]) == settings.server.ops_port


def test_k8s_shutdown_fits_in_the_grace_period(
    pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    settings, _ = k8s_settings(pod, sidecar)
    assert pod["terminationGracePeriodSeconds"] > settings.server.shutdown_grace_seconds + 5


def test_k8s_the_app_calls_the_sidecar_and_prometheus_scrapes_it(
    pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    settings, _ = k8s_settings(pod, sidecar)
    (app,) = pod["containers"]
    base = container_env(app)["NMBRS_API_BASE_URL"]["value"]
    assert base == f"http://127.0.0.1:{settings.server.port}"
    (deployment,) = kind(k8s("nmbrs-proxy.yaml"), "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/_proxy/metrics"
    assert "/_proxy/metrics" in ops_routes()
    assert int(annotations["prometheus.io/port"]) == settings.server.ops_port
    assert deployment["spec"]["replicas"] > 1  # several replicas, one grant in Redis
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_k8s_only_monitoring_reaches_the_proxy_port(
    pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    settings, _ = k8s_settings(pod, sidecar)
    (policy,) = kind(k8s("nmbrs-proxy.yaml"), "NetworkPolicy")
    (deployment,) = kind(k8s("nmbrs-proxy.yaml"), "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == \
        deployment["spec"]["template"]["metadata"]["labels"]
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [settings.server.ops_port]
    (source,) = rule["from"]
    assert set(source) == {"namespaceSelector"}


def test_k8s_redis_is_where_the_proxies_look_for_it(
    pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    # REDIS_URL comes from the Secret whose creation the manifest's header spells out
    url = urlsplit(k8s_redis_url())
    docs = k8s("redis.yaml")
    (service,) = kind(docs, "Service")
    (redis_set,) = kind(docs, "StatefulSet")
    assert url.scheme == "redis"
    assert url.hostname == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"]
    (container,) = redis_set["spec"]["template"]["spec"]["containers"]
    assert "--appendonly" in container["args"]  # a restart must not lose the refresh token
    assert service["spec"]["selector"] == redis_set["spec"]["template"]["metadata"]["labels"]
    (policy,) = kind(docs, "NetworkPolicy")
    (deployment,) = kind(k8s("nmbrs-proxy.yaml"), "Deployment")
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == \
        deployment["spec"]["template"]["metadata"]["labels"]
    _, data = k8s_settings(pod, sidecar)
    assert data["session"]["secret"].startswith("env:")  # shared by every replica


# --- docker compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    return loaded


def compose_settings(compose: dict[str, Any]) -> Settings:
    proxy = compose["services"]["nmbrs-proxy"]
    config_path = proxy["environment"]["NMBRS_PROXY_CONFIG"]
    mounts = dict(reversed(m.split(":")[:2]) for m in proxy["volumes"])
    source = (DEPLOY / "compose" / mounts[config_path]).resolve()
    settings, _ = load_config(source.read_text(), set(proxy["environment"]))
    return settings


def test_compose_builds_this_image_and_mounts_its_config(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["nmbrs-proxy"]
    settings = compose_settings(compose)
    assert proxy["image"] == IMAGE
    assert (DEPLOY / "compose" / proxy["build"]["context"] / proxy["build"]["dockerfile"]).exists()
    assert proxy["command"] == ["serve"]
    volumes = dict(reversed(m.split(":")[:2]) for m in proxy["volumes"])
    state = str(settings.store.path.parent)
    assert volumes[state] in compose["volumes"]  # a named volume: the refresh token survives
    published = proxy["ports"][0].split(":")
    assert published[0] == "127.0.0.1"  # the page, on the host's loopback only
    assert int(published[2]) == settings.server.port


def test_compose_healthcheck_and_stop_grace(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["nmbrs-proxy"]
    settings = compose_settings(compose)
    command = " ".join(proxy["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/\S+?)'", command)
    assert match is not None
    assert int(match.group(1)) == settings.server.port
    assert match.group(2) in app_routes()
    grace = int(proxy["stop_grace_period"].removesuffix("s"))
    assert grace > settings.server.shutdown_grace_seconds


def test_compose_guards_the_port_as_the_security_rules_ask(compose: dict[str, Any]) -> None:
    settings = compose_settings(compose)
    proxy = compose["services"]["nmbrs-proxy"]
    assert settings.server.allow_anonymous  # 0.0.0.0 in the container, published on loopback
    assert all(p.startswith("127.0.0.1:") for p in proxy["ports"])
    # the other services share the proxy's network namespace; none sits on the network
    others = [name for name in compose["services"] if name != "nmbrs-proxy"]
    assert all(compose["services"][name]["network_mode"] == "service:nmbrs-proxy"
               for name in others)
    bridge = ip_network("172.16.0.0/12")  # where published requests come from
    assert bridge in settings.admin.cidrs


def test_compose_the_app_shares_the_proxys_loopback(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    settings = compose_settings(compose)
    assert app["network_mode"] == "service:nmbrs-proxy"
    assert app["environment"]["NMBRS_API_BASE_URL"] == f"http://127.0.0.1:{settings.server.port}"
    assert app["depends_on"]["nmbrs-proxy"]["condition"] == "service_healthy"


# --- systemd ----------------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def systemd_settings() -> Settings:
    service = unit("nmbrs-proxy.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    config = Path(argv[argv.index("--config") + 1])
    assert config == Path("/etc/nmbrs-proxy/config.toml")
    provided = {
        line.split("=", 1)[0]
        for line in (DEPLOY / "systemd" / "nmbrs-proxy.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    settings, _ = load_config((DEPLOY / "systemd" / "config.toml").read_text(), provided)
    return settings


def test_systemd_the_socket_is_the_configured_address() -> None:
    settings = systemd_settings()
    listen = unit("nmbrs-proxy.socket")["Socket"]["ListenStream"]
    assert listen == f"{settings.server.host}:{settings.server.port}"


def test_systemd_service_runs_serve_with_notify_and_its_state_directory() -> None:
    settings = systemd_settings()
    service = unit("nmbrs-proxy.service")
    argv = shlex.split(service["Service"]["ExecStart"])
    assert Path(argv[0]).name == "nmbrs-proxy"
    assert "serve" in argv
    assert service["Service"]["Type"] == "notify"  # the proxy sends READY=1 (sd_notify)
    assert service["Unit"]["Requires"] == "nmbrs-proxy.socket"
    assert Path("/var/lib") / service["Service"]["StateDirectory"] == settings.store.path.parent
    assert service["Service"]["EnvironmentFile"] == "/etc/nmbrs-proxy/env"


def test_systemd_stop_timeout_covers_the_drain() -> None:
    settings = systemd_settings()
    service = unit("nmbrs-proxy.service")["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > settings.server.shutdown_grace_seconds


def test_systemd_reload_sends_sighup_which_reloads_the_file() -> None:
    """`systemctl reload` signals the main process; SIGHUP reloads (tests/e2e/test_reload_e2e)."""
    service = unit("nmbrs-proxy.service")["Service"]
    assert shlex.split(service["ExecReload"]) == ["/bin/kill", "-HUP", "$MAINPID"]

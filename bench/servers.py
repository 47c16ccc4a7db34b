"""The processes a benchmark run starts on loopback, their configuration, and /proc readings.

Everything is written into one temporary directory (certificates, nginx and proxy configs,
token files, the 1 GB file, logs) that the run deletes at the end: nothing here is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp

HOST: Final = "127.0.0.1"
ROOT: Final = Path(__file__).resolve().parent.parent
BENCH_VENV: Final = ROOT / "bench" / ".venv"
CLIENT_ID: Final = "PartnerApp_demo_*$1"  # the sandbox's demo client (fake credentials)
CLIENT_SECRET: Final = "s3cr:et%+demo"  # noqa: S105 - the sandbox's published fake secret
SUBSCRIPTION_KEY: Final = "demo-subscription-key"
SESSION_SECRET: Final = "bench-session-secret-0123456789"  # noqa: S105 - a throwaway run's key
SCOPES: Final = ("offline_access", "company.info.read")
# The access policy is on in every proxy config: five clients with rules, and the callers
# present the last one's key, so every key digest is compared (as the real door would).
CLIENT_KEYS: Final = tuple(f"bench-client-key-{i}" for i in range(5))
PROXY_KEY: Final = CLIENT_KEYS[-1]
KEY_HEADER: Final = f"X-Proxy-Key: {PROXY_KEY}"
BIG_FILE_SIZE: Final = 1024**3
JSON_PATH: Final = "/api/companies"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def program(name: str) -> str | None:
    """A system program, also where root's PATH may not look (nginx lives in /usr/sbin)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def mitmdump() -> str | None:
    path = BENCH_VENV / "bin" / "mitmdump"
    return str(path) if path.exists() else None


# --- /proc readings -------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and every descendant (nginx workers, proxy workers), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes (not of their waited-for children)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident set size summed over processes (shared pages count once per process)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    return total


# --- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    """A started program; its output goes to a log file in the run's directory."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


@dataclass
class Processes:
    """Every process this run started, stopped in reverse order at the end, each by its pid."""

    workdir: Path
    started: list[Proc] = field(default_factory=list)

    def start(
        self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL, stdout: int | None = None, cwd: Path = ROOT,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        handle = log.open("ab")
        # This tree's `proxy`, whatever the interpreter has installed.
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        popen = subprocess.Popen(
            list(argv), stdin=stdin, stdout=handle if stdout is None else stdout,
            stderr=handle, env={**os.environ, "PYTHONPATH": path, **(env or {})}, cwd=cwd,
        )
        handle.close()
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()


async def wait_http(url: str, *, proc: Proc, timeout: float = 30.0, status: int = 200) -> float:
    """Poll `url` until it answers `status`; returns the seconds it took. Fails if proc dies."""
    started = time.monotonic()
    deadline = started + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url, ssl=False) as response:
                    if response.status == status:
                        return time.monotonic() - started
            await asyncio.sleep(0.01)
    raise RuntimeError(f"{proc.name}: {url} did not answer {status} in {timeout}s:\n{proc.tail()}")


# --- files ----------------------------------------------------------------------------------


def run_quiet(argv: Sequence[str]) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made at run time (never stored)."""
    openssl = program("openssl") or "openssl"
    ca_key, ca, key = directory / "ca.key", directory / "ca.pem", directory / "server.key"
    csr, cert, ext = directory / "server.csr", directory / "server.pem", directory / "server.ext"
    run_quiet([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
               "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=nmbrs-proxy bench CA",
               "-addext", "basicConstraints=critical,CA:TRUE",
               "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run_quiet([openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
               "-out", str(csr), "-subj", "/CN=127.0.0.1"])
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "authorityKeyIdentifier=keyid\n")
    run_quiet([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
               "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", str(ext)])
    return ca, cert, key


def companies_json(size: int = 1024) -> bytes:
    """An Nmbrs-shaped list page of about `size` bytes."""
    rows = []
    body = b""
    number = 1
    while True:
        rows.append({"companyId": f"{number:08d}-0000-4000-8000-000000000000",
                     "number": number, "name": f"Company {number}", "debtorId": 1000 + number})
        document = {"pagination": {"pageNumber": 1, "pageSize": 20, "totalPages": 1,
                                   "totalRecords": len(rows), "nextPage": None}, "data": rows}
        candidate = json.dumps(document).encode()
        if len(candidate) > size:
            break
        body = candidate
        number += 1
    return body.ljust(size - 1) + b"\n"


def sparse_file(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        handle.truncate(size)


# --- nginx ----------------------------------------------------------------------------------


def _nginx_main(workdir: Path, name: str, workers: int) -> str:
    # Started as root, nginx runs its workers as `nobody`: the run's directory is world-readable
    # (it holds no secret: fake sandbox credentials and a throwaway key only the master reads).
    return (
        f"worker_processes {workers};\ndaemon off;\nmaster_process on;\n"
        f"pid {workdir}/{name}.pid;\nerror_log {workdir}/{name}.error.log warn;\n"
        "events { worker_connections 16384; }\n"
    )


def _nginx_http_common(workdir: Path, name: str) -> str:
    temp = workdir / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    return (
        "access_log off;\nsendfile on;\ntcp_nopush on;\ntcp_nodelay on;\n"
        "keepalive_requests 10000000;\nkeepalive_timeout 75s;\n"
        f"client_body_temp_path {temp}/body;\nproxy_temp_path {temp}/proxy;\n"
        f"fastcgi_temp_path {temp}/fastcgi;\nuwsgi_temp_path {temp}/uwsgi;\n"
        f"scgi_temp_path {temp}/scgi;\n"
    )


def nginx_upstream_conf(
    workdir: Path, *, port: int, tls_port: int, cert: Path, key: Path, workers: int = 2
) -> Path:
    """The upstream: the 1 KB JSON and the 1 GB file, plain and TLS; it wants the credentials.

    A request without a bearer token or with a wrong subscription key gets 401, so a proxy that
    fails to inject the headers shows up as errors in the run, never as speed.
    """
    (workdir / "www").mkdir(exist_ok=True)
    (workdir / "www" / "companies.json").write_bytes(companies_json())
    sparse_file(workdir / "www" / "big.bin", BIG_FILE_SIZE)
    guard = (
        'if ($http_authorization !~ "^Bearer [A-Za-z0-9._~+/=-]+$") { return 401; }\n'
        f'if ($http_x_subscription_key != "{SUBSCRIPTION_KEY}") {{ return 401; }}\n'
    )
    conf = workdir / "nginx-upstream.conf"
    conf.write_text(
        _nginx_main(workdir, "nginx-upstream", workers)
        + "http {\n"
        + _nginx_http_common(workdir, "nginx-upstream")
        + "ssl_session_cache shared:up:1m;\n"
        + f"server {{\nlisten {HOST}:{port} backlog=4096;\n"
        + f"listen {HOST}:{tls_port} ssl backlog=4096;\n"
        + f"ssl_certificate {cert};\nssl_certificate_key {key};\n"
        + f"root {workdir}/www;\n"
        + f"location = {JSON_PATH} {{\n{guard}default_type application/json;\n"
        + f"alias {workdir}/www/companies.json;\n}}\n"
        + f"location = /big {{\n{guard}default_type application/octet-stream;\n"
        + f"alias {workdir}/www/big.bin;\n}}\n"
        + "location / { return 404; }\n}\n}\n"
    )
    return conf


def nginx_proxy_conf(
    workdir: Path, *, name: str, port: int, workers: int, upstream_port: int, tls_port: int,
    ca: Path, token: str,
) -> Path:
    """The baseline: nginx as a header-injecting reverse proxy with keep-alive upstream pools.

    It does the same work as the proxy per request: the caller's key checked (and not passed
    on), X-Forwarded-*, the bearer token and the subscription key set, `/tls/` forwarded over
    verified TLS with session reuse.
    """
    inject = (
        'proxy_http_version 1.1;\nproxy_set_header Connection "";\n'
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "proxy_set_header X-Forwarded-Proto $scheme;\nproxy_set_header X-Forwarded-Host $host;\n"
        f'proxy_set_header Authorization "Bearer {token}";\n'
        f'proxy_set_header X-Subscription-Key "{SUBSCRIPTION_KEY}";\n'
        'proxy_set_header X-Proxy-Key "";\nadd_header Via "1.1 nginx";\n'
    )
    conf = workdir / f"{name}.conf"
    door = f'if ($http_x_proxy_key != "{PROXY_KEY}") {{ return 401; }}\n'
    conf.write_text(
        _nginx_main(workdir, name, workers)
        + "http {\n"
        + _nginx_http_common(workdir, name)
        + f"upstream plain {{ server {HOST}:{upstream_port}; keepalive 512; "
        + "keepalive_requests 10000000; }\n"
        + f"upstream tls {{ server {HOST}:{tls_port}; keepalive 512; "
        + "keepalive_requests 10000000; }\n"
        + f"server {{\nlisten {HOST}:{port} backlog=4096;\n{door}"
        + f"location / {{\n{inject}proxy_pass http://plain;\n}}\n"
        + f"location /tls/ {{\n{inject}proxy_pass https://tls/;\n"
        + "proxy_ssl_verify on;\n"  # nginx matches DNS names only: the certificate has both
        + f"proxy_ssl_trusted_certificate {ca};\nproxy_ssl_name localhost;\n"
        + "proxy_ssl_session_reuse on;\n}\n"
        + "}\n}\n"
    )
    return conf


def nginx_argv(conf: Path, workdir: Path) -> list[str]:
    nginx = program("nginx") or "nginx"
    return [nginx, "-p", str(workdir), "-e", str(workdir / "nginx-startup.log"), "-c", str(conf)]


# --- the proxy under test -------------------------------------------------------------------


@dataclass(frozen=True)
class Conn:
    """One [connections.NAME] table of a generated proxy config."""

    name: str
    prefix: str
    upstream: str
    issuer: str
    refresh_margin: float = 300.0


def proxy_conf(
    path: Path, *, port: int, store: Path, connections: Sequence[Conn], extra: str = "",
    server_extra: Sequence[str] = (),
) -> Path:
    """`extra`: TOML appended as it is, `server_extra`: lines of [server] (a feature's
    settings, for bench/features.py)."""
    redirect = f"http://{HOST}:{port}/_proxy/callback"
    lines = [
        "[server]", f'host = "{HOST}"', f"port = {port}", *server_extra,
        "[store]", f'path = "{store}"',
        "[session]", f'secret = "{SESSION_SECRET}"',
    ]
    for conn in connections:
        lines += [
            f"[connections.{conn.name}]", 'provider = "nmbrs"', f'prefix = "{conn.prefix}"',
            f'upstream = "{conn.upstream}"', f'issuer = "{conn.issuer}"',
            f'subscription_key = "{SUBSCRIPTION_KEY}"', f'client_id = "{CLIENT_ID}"',
            f'client_secret = "{CLIENT_SECRET}"', f'redirect_uri = "{redirect}"',
            f"scopes = {json.dumps(list(SCOPES))}",
            f"refresh_margin_seconds = {conn.refresh_margin}",
        ]
    for index, key in enumerate(CLIENT_KEYS):
        lines += [
            "[[clients]]", f'name = "bench-{index}"',
            f'key_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"',
            ('rules = [{ methods = ["GET"], paths = ["/api/companies/*/employees*", "/api/**", '
             '"/big"] }, { methods = ["POST", "PUT"], paths = ["/upload"] }]'),
        ]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def proxy_argv(config: Path, *, workers: int = 1) -> list[str]:
    argv = [sys.executable, "-m", "proxy", "--log-level", "info", "serve", "--config", str(config)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return argv


async def link(proxy_url: str, connection: str) -> None:
    """What a person does on /_proxy/: Connect, consent (automatic in the sandbox), back."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session, session.get(
        f"{proxy_url}/_proxy/login", params={"connection": connection}
    ) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"linking {connection} at {proxy_url} failed: {response.status}")


# --- mitmproxy ------------------------------------------------------------------------------


def mitm_argv(
    binary: str, workdir: Path, *, port: int, tls_listen: int, upstream_port: int,
    tls_port: int, ca: Path, token: str,
) -> list[str]:
    """mitmdump in reverse mode, quiet, setting the same two headers as the others."""
    return [
        binary, "-q", "--listen-host", HOST,
        "--mode", f"reverse:http://{HOST}:{upstream_port}@{port}",
        "--mode", f"reverse:https://{HOST}:{tls_port}@{tls_listen}",
        "--set", f"confdir={workdir / 'mitmproxy'}",
        "--set", f"ssl_verify_upstream_trusted_ca={ca}",
        "--set", "stream_large_bodies=1m",
        "--set", f"modify_headers=|~q|Authorization|Bearer {token}",
        "--set", f"modify_headers=|~q|X-Subscription-Key|{SUBSCRIPTION_KEY}",
    ]


def versions() -> dict[str, str]:
    """What ran: tool versions, for the results file."""
    found: dict[str, str] = {}
    for name, argv in {
        "nginx": [program("nginx") or "nginx", "-v"],
        "wrk": [program("wrk") or "wrk", "--version"],
        "mitmproxy": [mitmdump() or "mitmdump", "--version"],
    }.items():
        with contextlib.suppress(OSError):
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            text = (result.stdout + result.stderr).strip().splitlines()
            found[name] = text[0] if text else "?"
    found["python"] = sys.version.split()[0]
    with contextlib.suppress(ImportError):
        import aiohttp as _aiohttp  # noqa: PLC0415 - only its version

        found["aiohttp"] = _aiohttp.__version__
    try:
        found["uvloop"] = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        found["uvloop"] = "not installed"
    return found


def machine() -> dict[str, object]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_mb": mem_kb // 1024,
            "kernel": os.uname().release}


def iter_lines(path: Path) -> Iterator[str]:
    with contextlib.suppress(OSError):
        yield from path.read_text(errors="replace").splitlines()

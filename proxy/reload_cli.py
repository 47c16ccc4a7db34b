"""`nmbrs-proxy reload`: ask the running proxy to reload its configuration file.

It calls `POST /_proxy/api/reload` on the proxy the configuration describes (or `--url`), with
the admin key from $NMBRS_PROXY_ADMIN_KEY when `[admin]` asks for one, and prints what was
applied, what waits for a restart, or every problem of an invalid file. With `serve --workers
N` the worker that answers has the supervisor reload every worker. Under systemd, `systemctl
reload` sends SIGHUP instead (deploy/systemd/nmbrs-proxy.service), which does the same.

When the proxy listens with TLS (`[server] tls_cert`), the call is made over HTTPS. On a
loopback address (where the configuration leads when the proxy listens on every address) the
certificate is not verified: a certificate names the proxy's public name, not 127.0.0.1, and
the one running may be the one a renewal on disk is about to replace; the call never leaves the
machine, as the plain-HTTP call does without TLS. Anywhere else it is verified, host name
included, against the system's CAs ($SSL_CERT_FILE adds a bundle) and the certificates of
`tls_cert`. A proxy that requires client certificates is reloaded with SIGHUP instead.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

from proxy.config import Settings
from proxy.inbound.policy import is_loopback_host

ADMIN_KEY_ENV: Final = "NMBRS_PROXY_ADMIN_KEY"
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 2
_TIMEOUT_SECONDS: Final = 30.0
# A proxy listening on every address is reached on loopback.
_LOOPBACK: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


def reload_url(settings: Settings) -> str:
    host = _LOOPBACK.get(settings.server.host, settings.server.host)
    shown = f"[{host}]" if ":" in host else host
    scheme = "http" if settings.server.tls is None else "https"
    return f"{scheme}://{shown}:{settings.server.port}/_proxy/api/reload"


def tls_context(settings: Settings, target: str) -> ssl.SSLContext | None:
    """The client context for an https `target` (None for http), as the docstring above says."""
    parts = urlsplit(target)
    if parts.scheme != "https":
        return None
    if is_loopback_host(parts.hostname or ""):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # loopback: see the module's docstring
    else:
        context = ssl.create_default_context()
        tls = settings.server.tls
        if tls is not None:
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf may be the anchor
            context.load_verify_locations(cafile=tls.cert)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def run_reload(settings: Settings, url: str | None, *, out: TextIO, err: TextIO,
               environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    target = url or reload_url(settings)
    headers = {"Content-Type": "application/json"}
    key = environ.get(ADMIN_KEY_ENV)
    if key:
        headers["X-Proxy-Key"] = key
    request = urllib.request.Request(target, data=b"{}", headers=headers, method="POST")  # noqa: S310 - an http(s) URL of our own
    tls = settings.server.tls
    try:
        context = tls_context(settings, target)
        with urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS,  # noqa: S310
                                    context=context) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        return _refused(error, err)
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"nmbrs-proxy reload: cannot reach the proxy at {target}: {error}", file=err)
        if tls is not None and tls.client_ca is not None and tls.client_auth == "required":
            print("the proxy requires a client certificate (server.tls_client_auth = "
                  '"required"): reload it with SIGHUP instead (systemctl reload, kill -HUP)',
                  file=err)
        return EXIT_FAILED
    applied = ", ".join(body.get("applied", [])) or "nothing changed"
    print(f"reloaded: {applied}", file=out)
    waiting = body.get("needs_restart", [])
    if waiting:
        print(f"changed, but applied only by a restart: {', '.join(waiting)}", file=out)
    return 0


def _refused(error: urllib.error.HTTPError, err: TextIO) -> int:
    try:
        problem: dict[str, Any] = json.loads(error.read())
    except ValueError:
        problem = {}
    title = problem.get("title") or f"HTTP {error.code}"
    print(f"nmbrs-proxy reload: {title}", file=err)
    for line in problem.get("errors", []):
        print(f"  - {line}", file=err)
    if problem.get("detail"):
        print(problem["detail"], file=err)
    return EXIT_CONFIG if error.code == 422 else EXIT_FAILED

# nmbrs-proxy: a slim, non-root image. Config and state are mounted paths:
#   /etc/nmbrs-proxy/config.toml   the configuration (read only)
#   /var/lib/nmbrs-proxy           the token store (persistent: it holds the refresh token)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NMBRS_PROXY_CONFIG=/etc/nmbrs-proxy/config.toml \
    NMBRS_PROXY_HEALTH_URL=http://127.0.0.1:8080/_proxy/healthz

RUN groupadd --system --gid 10001 nmbrs-proxy \
 && useradd --system --uid 10001 --gid nmbrs-proxy --home-dir /var/lib/nmbrs-proxy \
      --no-create-home --shell /usr/sbin/nologin nmbrs-proxy \
 && install -d -o nmbrs-proxy -g nmbrs-proxy -m 0700 /var/lib/nmbrs-proxy \
 && install -d -m 0755 /etc/nmbrs-proxy

WORKDIR /opt/nmbrs-proxy
# The exact versions CI tested, hashes checked (requirements/runtime.lock: the dependencies, the
# fast extra with uvloop's event loop, which serve then runs on, and setuptools to build
# the project), in a layer of their own that a code change does not rebuild.
COPY requirements/runtime.lock ./requirements/
RUN pip install --require-hashes --no-deps -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-deps --no-build-isolation . && rm -rf /opt/nmbrs-proxy/build

USER nmbrs-proxy:nmbrs-proxy
WORKDIR /var/lib/nmbrs-proxy
VOLUME ["/var/lib/nmbrs-proxy"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['NMBRS_PROXY_HEALTH_URL'], timeout=2)"]

ENTRYPOINT ["nmbrs-proxy"]
CMD ["serve"]

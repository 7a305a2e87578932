# hacontrol: the failover controller, as a container (usually a sidecar next to ProxySQL).
#
#   docker build -t hacontrol .
#   docker run --rm -v $PWD/settings.toml:/etc/hacontrol/settings.toml:ro \
#     -v hacontrol-state:/var/lib/hacontrol -e HACONTROL_MYSQL__PASSWORD_FILE=/run/secrets/... \
#     hacontrol
#
# Configuration: a mounted settings.toml (HACONTROL_CONFIG), HACONTROL_* environment variables,
# and secrets as files through the *_file keys. The journal must be on a persistent volume.
# No Docker engine runs where this project is built: CI lints this file with hadolint.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hacontrol ./hacontrol
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# tini as PID 1: it forwards SIGTERM to hacontrol and reaps the orphans hooks may leave.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 hacontrol \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/hacontrol --create-home \
       hacontrol
COPY --from=build /wheels /wheels
# Only the wheels built above, from this source tree: no index, nothing unpinned.
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/hacontrol-*.whl \
    && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/hacontrol
ENV HACONTROL_CONFIG=/etc/hacontrol/settings.toml \
    HACONTROL_CONTROLLER__JOURNAL=/var/lib/hacontrol/journal.jsonl \
    HACONTROL_API__HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/hacontrol"]
EXPOSE 8008
# SIGTERM waits for a running failover or switchover (bounded): give the container time.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8008/health', timeout=2)"]
ENTRYPOINT ["tini", "--", "hacontrol"]
CMD ["run"]

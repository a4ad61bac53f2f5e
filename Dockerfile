# queuectl in a container: workers by default, any other command on demand.
#
#   docker build -t queuectl .
#   docker run -d --init --name worker -v queuectl:/data --stop-timeout 600 queuectl
#   docker exec worker queuectl enqueue "echo hello"
#
# Offline builds (no package index reachable from inside the build): put wheels
# of every dependency and of the build backend ([build-system] requires in
# pyproject.toml) into wheels/ first, then build as usual; the install step
# below switches to them when wheels/*.whl exist. .ci/image-check does this.
#
#   pip wheel --wheel-dir wheels ".[postgres]" "hatchling>=1.27"
#
# The wheels must match the base image's Python (cp311 for the default base).
#
# BASE_IMAGE: the official slim Python 3.11 on Debian bookworm. Slim keeps the
# image small while staying on glibc, so the manylinux wheels (psycopg-binary,
# PyYAML, rpds-py) install as they are. 3.11 is both queuectl's minimum and
# bookworm's own python3, so one wheelhouse serves this base and a plain Debian
# bookworm base with python3 and python3-venv (what .ci/image-check builds on).
# Both stages must use the same base: the venv's bin/python is a symlink to the
# base's interpreter.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# python3 -m venv, not virtualenv or uv: it is in the official image and in
# Debian's python3-venv alike.
RUN python3 -m venv /opt/queuectl

WORKDIR /src
COPY . .

# The project is always built from the copied source (so a stale queuectl wheel
# in wheels/ can never end up in the image); only dependencies and the build
# backend come from the wheelhouse when there is one. pip is removed afterwards:
# the image runs queuectl, it does not install things.
RUN set -eu; \
    if ls wheels/*.whl >/dev/null 2>&1; then \
        echo "installing from the wheelhouse in wheels/ (offline)"; \
        /opt/queuectl/bin/pip install --no-index --find-links wheels ".[postgres]"; \
    else \
        echo "no wheels/*.whl: installing from the package index"; \
        /opt/queuectl/bin/pip install ".[postgres]"; \
    fi; \
    /opt/queuectl/bin/pip uninstall --yes pip setuptools; \
    /opt/queuectl/bin/queuectl --version


FROM ${BASE_IMAGE}

ARG BASE_IMAGE
ARG VERSION=unspecified
LABEL org.opencontainers.image.title="queuectl" \
      org.opencontainers.image.description="A command-line background job queue: SQLite by default, PostgreSQL across machines." \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify it and a
# bind-mounted host directory can be chowned to match (chown 10001:10001 DIR).
# QUEUECTL_UID changes both: build with your own uid (compose.yaml passes it) when
# you drop spool files from the host, since the spool watcher takes only files
# owned by its own user or root.
# /data is the queuectl home: created here owned by that user with mode 0700,
# which is what queuectl itself creates (it does not chmod a directory that
# already exists). A new named volume copies this owner and mode.
# --no-log-init: a high uid would otherwise grow sparse lastlog/faillog files.
# --non-unique: a uid or gid the base already has (e.g. 100 "users") is fine.
ARG QUEUECTL_UID=10001
RUN groupadd --non-unique --gid "${QUEUECTL_UID}" queuectl \
    && useradd --non-unique --no-log-init --uid "${QUEUECTL_UID}" --gid queuectl --home-dir /jobs \
        --no-create-home --shell /usr/sbin/nologin queuectl \
    && install -d -m 0700 -o queuectl -g queuectl /data /jobs

COPY --from=build /opt/queuectl /opt/queuectl

ENV PATH="/opt/queuectl/bin:${PATH}" \
    QUEUECTL_HOME=/data \
    PYTHONUNBUFFERED=1

VOLUME ["/data"]
# Jobs start in /jobs (also the user's HOME), not in the queue's own state directory.
WORKDIR /jobs
USER ${QUEUECTL_UID}:${QUEUECTL_UID}

# SIGTERM is graceful for queuectl workers: each finishes its running job,
# records it, and exits. Give them time: `docker stop -t SECONDS`, `docker run
# --stop-timeout`, compose `stop_grace_period` or Kubernetes
# `terminationGracePeriodSeconds` must exceed the longest job, or the runtime's
# SIGKILL cuts it off and the attempt is retried. Run with `--init` (compose
# `init: true`) so that orphaned grandchildren of jobs are reaped.
STOPSIGNAL SIGTERM

# Healthy while the store answers: the SQLite file under /data, or PostgreSQL
# when QUEUECTL_DATABASE_URL points there.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["queuectl", "status"]

ENTRYPOINT ["queuectl"]
CMD ["worker", "run"]

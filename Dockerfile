# keysvc container image.
#
# Two stages: `build` creates a virtualenv at /opt/keysvc from requirements.lock (every file pinned by
# sha256, wheels only, so nothing is compiled) plus the keysvc package itself; the final stage is the same
# slim base with that virtualenv copied in, a numeric non-root user and no pip, compiler or package cache.
# The root filesystem can be mounted read-only: the service writes only to the file-backend volume
# (/var/lib/keysvc) and /tmp, both mounted by the helm chart.
#
# The install commands below are replayed verbatim, in a fresh venv, by tests/test_dockerfile.py.
# Both stages use one base pinned by digest (a tag can be moved; a digest cannot): update tag and digest
# together (`docker buildx imagetools inspect python:3.11.14-slim-trixie`, or let Renovate/Dependabot do it).
# The build backend (setuptools) is hash-locked too (requirements-build.lock) and used without build
# isolation, so nothing unpinned is fetched while building.
#
# checkov:skip=CKV_DOCKER_2: no HEALTHCHECK on purpose: Kubernetes ignores it; the chart's liveness (/healthz) and readiness (/readyz) probes do that job
FROM python:3.11.14-slim-trixie@sha256:193fdd0bbcb3d2ae612bd6cc3548d2f7c78d65b549fcaa8af75624c47474444d AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src

COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/keysvc \
 && /opt/keysvc/bin/python -m pip install --require-hashes --no-deps --only-binary=:all: \
      -r requirements.lock -r requirements-build.lock

COPY pyproject.toml ./
COPY keysvc ./keysvc
# `pip check` proves the lock satisfies every runtime dependency the package declares (the installs above
# use --no-deps, so a dependency missing from the lock would otherwise pass silently). pip and setuptools
# then leave the venv: the runtime image needs neither.
RUN /opt/keysvc/bin/python -m pip install --no-deps --no-build-isolation . \
 && /opt/keysvc/bin/python -m pip check \
 && /opt/keysvc/bin/python -m pip uninstall --yes pip setuptools


FROM python:3.11.14-slim-trixie@sha256:193fdd0bbcb3d2ae612bd6cc3548d2f7c78d65b549fcaa8af75624c47474444d

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="keysvc" \
      org.opencontainers.image.description="Hardened JWKS and signing-key service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/example/keysvc" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-trixie" \
      org.opencontainers.image.base.digest="sha256:193fdd0bbcb3d2ae612bd6cc3548d2f7c78d65b549fcaa8af75624c47474444d"

# The base image's own pip/setuptools/wheel are build tools too; the service never installs anything.
RUN python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel \
 && groupadd --system --gid 10001 keysvc \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin keysvc \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/keysvc

COPY --from=build /opt/keysvc /opt/keysvc

ENV PATH=/opt/keysvc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KEYSVC_CONFIG=/etc/keysvc/keysvc.yaml

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081
# keysvc drains in-flight requests on SIGTERM, then exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/keysvc/bin/keysvc"]
CMD ["serve"]

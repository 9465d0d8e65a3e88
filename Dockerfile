# The Cloud Run image: the engine and its runtime dependencies, nothing else.
#
# * Base pinned by digest (a tag moves; a digest is one exact image). The digest is
#   python:3.11-slim's multi-platform index as published on Docker Hub (the same digest is served
#   by the public.ecr.aws/docker/library mirror); it could not be pulled where this file was
#   written, so the first build verifies it. To move to a newer base, resolve the tag and paste
#   the index digest here (tests/deploy/test_dockerfile.py refuses a FROM without one):
#     docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
#     (or: crane digest python:3.11-slim)
# * Only runtime dependencies: requirements.runtime.lock is requirements.lock restricted to
#   pyproject's [project].dependencies (no pytest, ruff, mypy, moto, ...); `make lock` writes both.
# * No sandbox, tests, demo integration, instructions or plans: integrations are read from the
#   mounted HEALTHIE_SYNC_CONFIG_DIR (docs/deploy.md), so a rule change needs no rebuild.
# * Runs as an unprivileged user; the package is installed into a virtualenv the user cannot
#   write to. serve handles SIGTERM itself (app/service/lifecycle.py), so it runs as PID 1
#   through exec-form CMD, with no shell in between to swallow the signal.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/engine
COPY requirements.runtime.lock /tmp/requirements.runtime.lock
RUN /opt/engine/bin/pip install --no-deps -r /tmp/requirements.runtime.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY connectors ./connectors
# setuptools builds the wheel here only; it is not installed into the engine's virtualenv
RUN python -m pip install 'setuptools==80.9.0' \
 && python -m pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheel . \
 && /opt/engine/bin/pip install --no-deps /tmp/wheel/*.whl

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/engine/bin:$PATH \
    HEALTHIE_SYNC_QUEUE_BACKEND=pubsub HEALTHIE_SYNC_STATE_BACKEND=firestore \
    HEALTHIE_SYNC_SECRETS_BACKEND=secret-manager HEALTHIE_SYNC_SCHEDULER=external \
    HEALTHIE_SYNC_CONFIG_DIR=/config/integrations HEALTHIE_SYNC_DATA_DIR=/tmp/healthie-sync
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin engine
COPY --from=build /opt/engine /opt/engine
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
CMD ["healthie-sync", "serve"]

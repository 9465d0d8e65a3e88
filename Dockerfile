# Cloud Run image: the same pinned dependencies as `make`, one process serving webhooks/flushes.
# The sandbox (the local Healthie) and the demo are development tools and stay out of it.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY app ./app
COPY workers ./workers
COPY connectors ./connectors
COPY prompts ./prompts
COPY config ./config
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && useradd --uid 10001 engine
USER engine
ENV HEALTHIE_SYNC_QUEUE_BACKEND=pubsub HEALTHIE_SYNC_SECRETS_BACKEND=secret-manager
CMD ["healthie-sync", "serve"]

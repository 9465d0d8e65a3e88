"""Secrets behind one interface (``stores.SecretStore``): environment variables locally, Google
Secret Manager in production, an in-memory store for tests and the demo."""

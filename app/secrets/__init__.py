"""Secrets behind one interface (``base.SecretStore``; versions and writing in
``base.VersionedSecretStore``): environment variables (``stores``, read-only default), an
envelope-encrypted file store (``file_store``, key from ``keys``), Google Secret Manager
(``secret_manager``), an in-memory store for tests and the demo; ``factory`` builds the one the
settings name."""

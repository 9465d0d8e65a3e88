"""The queue interface (Pub/Sub-shaped) and its backends.

``base.Queue`` is what the webhook receiver, flusher and workers use. ``sqlite.SqliteQueue`` is
the embedded default (and, with ``":memory:"``, the in-process fake for unit tests);
``pubsub.PubSubQueue`` is Google Cloud Pub/Sub. ``topology`` names the topics and subscriptions.
"""

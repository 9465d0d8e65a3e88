"""healthie-sync: the integration engine for the Healthie EHR.

Follow the data: ``app.intake.receiver`` (verify, resolve, publish) -> ``workers.flusher``
(stage dirty marks, publish work) -> ``workers.consumer`` (pull, lease, settle) ->
``workers.pipeline`` (fetch, prepare, decide, write, record) -> ``connectors``.
See docs/architecture.md for the whole picture.
"""

"""healthie-sync: the integration engine for the Healthie EHR.

Follow the data: ``app.webhooks`` (verify, resolve, publish) -> ``workers.flusher`` (drain dirty
marks, publish work) -> ``workers.processor`` (fetch entry, skip unchanged, decide, write) ->
``connectors``. See docs/architecture.md for the whole picture.
"""

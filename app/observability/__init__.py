"""Metrics for operators: ``metrics`` (the instruments and the recording API, a no-op until
configured) and ``setup`` (the exporters: Prometheus at ``/metrics``, Cloud Monitoring).
Structured logs live in ``app.core.logs``; the request trace in ``app.api.tracing``."""

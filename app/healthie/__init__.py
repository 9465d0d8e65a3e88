"""Everything the engine reads from Healthie goes through ``client.HealthieClient``.

* ``client`` — headers, error mapping, complexity-aware batching of entries and appointment
  resolution; pacing, retries and the circuit breaker come from ``app.resilience``;
* ``complexity`` — Healthie's complexity score, estimated as its guide says;
* ``pagination`` — following connection cursors, with a page cap; ``sweep`` — the missed-change
  sweep and webhook health built on it;
* ``selection`` — the entry fragment per integration (extra fields, excluded fields) and the
  type walk proving it never reaches notes or clinical documentation; ``schema_check`` —
  every operation validated against the live schema at start-up;
* ``operations/*.graphql`` — every operation the project sends (validated against the
  published schema by tests/healthie/test_operations.py); ``entry`` — canonical JSON and
  content hash;
* ``registration/`` — Healthie's registration of the engine's webhook receiver.
"""

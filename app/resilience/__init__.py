"""The one resilience layer every outbound client uses (Healthie, Anthropic, every connector).

* ``retry`` — the retry policy (tenacity: exponential jitter, never shorter than the server's
  Retry-After) and the one Retry-After parser;
* ``status`` — the table from an HTTP status to the engine's error kind;
* ``ratelimit`` — a token bucket per credential (window guard, AIMD on rate-limit answers);
* ``breaker`` — a circuit breaker per credential.
"""

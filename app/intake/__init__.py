"""Webhook intake: the only code on Healthie's request path.

``receiver`` (the route: size, type, signature, resolve, publish, answer) uses ``signature``
(Healthie's HMAC), ``events`` (event type -> dirty marks; clinical events never mark),
``batcher`` (concurrent publishes coalesced into one queue call, each with a deadline),
``dedupe`` (repeats of an accepted delivery within the window are dropped) and ``stats``
(counters by outcome, ids only). It never calls Healthie or the agent.
"""

"""A local stand-in for Healthie's GraphQL API.

The pieces, following the data:

* :mod:`sandbox.subset` generates ``schema.graphql``, the slice of Healthie's schema the
  engine and the sandbox use (a contract test keeps it identical to the real one);
* :mod:`sandbox.org` (with :mod:`sandbox.generate`, :mod:`sandbox.names`) builds a
  deterministic synthetic organization;
* :mod:`sandbox.core` holds it with a clock, credentials and counters; every change goes
  through :mod:`sandbox.changes` and emits webhooks through :mod:`sandbox.webhooks`, signed
  by :mod:`sandbox.signing`;
* :mod:`sandbox.timeline` orders the whole organization (by ``updated_at`` and friends)
  without generating it, for the sweep listings of :mod:`sandbox.listings`;
* :mod:`sandbox.server` serves GraphQL over HTTP (:mod:`sandbox.resolvers`,
  :mod:`sandbox.mutations`), with Healthie's auth, version, rate-limit and complexity rules
  and the optional failures of :mod:`sandbox.faults`; plain read queries run on the compiled
  executor of :mod:`sandbox.fastpath`, everything else on graphql-core;
* :mod:`sandbox.cli` runs it standalone.
"""

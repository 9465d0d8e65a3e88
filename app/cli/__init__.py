"""The ``healthie-sync`` command line (``main``)."""

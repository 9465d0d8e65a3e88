"""Core types every subsystem shares, and nothing else.

* ``errors`` — the one error tree (what the worker does next for each kind);
* ``settings`` — process settings from ``HEALTHIE_SYNC_*``;
* ``config`` — integration TOML files, validated when loaded;
* ``models`` — dirty marks, work items, entries, write plans, run records.
"""

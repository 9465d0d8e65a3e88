"""The agent: turns one patient's entry and the integration's instructions into a WritePlan.

Backends: ``plan`` (a compiled, reviewed, deterministic plan file; no model at run time) and
``claude`` (the anthropic SDK; issue 7). Both return the same validated ``WritePlan``.
"""

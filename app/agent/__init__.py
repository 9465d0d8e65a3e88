"""The agent: turns one patient's entry and the integration's instructions into a WritePlan.

Backends: ``plan`` (a compiled, reviewed, deterministic plan file; no model at run time) and
``claude`` (the anthropic SDK: one forced tool call per changed entry, prompt-cached prefix,
Message Batches for non-hourly cadences). Both return the same validated ``WritePlan``.
``compile`` turns an instruction document into a plan; ``report`` renders dry runs. See
``docs/agent.md``.
"""

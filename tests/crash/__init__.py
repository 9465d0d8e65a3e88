"""Crash tests with real kills: the engine runs as a child process (``tests.crash.child``) that
SIGKILLs itself at a crash point (``app.core.faults``), the test target keeps a log of every
write call (``tests.crash.writelog``), and ``tests.crash.engine`` starts, kills, restarts and
observes the children on the same durable queue and state."""

"""Process assembly: ``runtime`` builds the queue, state, secrets and per-integration clients
from settings (the composition root); ``preflight`` checks them before ``serve`` takes traffic;
``scheduler`` fires flushes on the cadence calendar in-process; ``serving`` runs an ASGI app on
loopback for the demo, tests and benchmarks."""

"""Structured logs, metrics, alert policies and the Healthie API version lifecycle."""

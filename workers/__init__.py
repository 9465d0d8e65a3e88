"""Flush and process: ``flusher`` turns dirty marks into work items, ``processor`` handles each
work item end to end, ``subscriber`` pulls work and maps outcomes to ack / nack / dead-letter."""

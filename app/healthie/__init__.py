"""Everything the engine reads from Healthie goes through ``client.HealthieClient``.

``operations/*.graphql`` hold every operation the project sends (validated against the published
schema by tests/test_operations.py); ``entry`` turns a fetched patient into canonical JSON and a
content hash.
"""

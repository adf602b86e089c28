"""The adapter registry: use cases, ORM models, blob store, settings."""

"""Alembic migration history of the registry (one linear chain, SQLite and PostgreSQL).

Run through ``registry.schema`` (``loradex db upgrade``), which points Alembic's
``script_location`` at this package, so it works from an installed wheel.
"""

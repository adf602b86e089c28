"""Alembic revisions. Never import ORM classes here: write the tables out as they were."""

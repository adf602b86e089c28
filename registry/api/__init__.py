"""The HTTP API of the registry (FastAPI): a thin shell over :class:`registry.service.Registry`.

Built by :func:`registry.api.app.create_app` from a :class:`~registry.settings.Settings`, never
at import time. Nothing outside this package imports it (``loradex list`` never pays for
FastAPI or pydantic); ``loradex serve`` imports it lazily.
"""

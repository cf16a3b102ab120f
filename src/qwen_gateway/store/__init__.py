"""Persistence: SQLAlchemy 2 (async) tables and repositories; Alembic migrations.

The only package that imports SQLAlchemy. SQLite by default, PostgreSQL by URL.
"""

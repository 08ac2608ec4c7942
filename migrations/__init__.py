"""Alembic migrations of the metrics store, runnable from code (CLI, app start, tests).

``alembic`` on the command line works too (``alembic.ini`` at the project root); both
take the database URL from the settings unless one is passed here.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

_HERE = Path(__file__).resolve().parent


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    if database_url:
        config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str | None = None) -> None:
    command.upgrade(alembic_config(database_url), "head")


def downgrade_to(revision: str, database_url: str | None = None) -> None:
    command.downgrade(alembic_config(database_url), revision)

"""`python -m app migrate`: Alembic migrations, and the URLs every command needs."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command
from app.core.config import Settings

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def migrations_root() -> Path:
    """The folder holding alembic.ini: the source checkout, else the working directory (an
    installed package, as in the container image)."""
    for root in (SOURCE_ROOT, Path.cwd()):
        if (root / "alembic.ini").is_file():
            return root
    raise SystemExit("alembic.ini not found; run from the project folder")


def alembic_config(settings: Settings) -> Config:
    root = migrations_root()
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "alembic"))
    config.attributes["sqlalchemy_url"] = settings.sqlalchemy_url
    return config


def migrate(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def require_urls(settings: Settings) -> None:
    missing = [
        n
        for n, v in (
            ("AUDIT_DATABASE_URL", settings.database_url),
            ("AUDIT_REDIS_URL", settings.redis_url),
        )
        if not v
    ]
    if missing:
        raise SystemExit(f"{' and '.join(missing)} must be set (or use `make run` for dev mode)")

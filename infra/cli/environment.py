"""What every command starts from: the console, logging, and settings from the environment."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TypeAlias

from rich.console import Console

from infra.runtime.settings import Settings, SettingsError

console = Console(stderr=True, highlight=False)


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def command_settings(*, migrate: bool = True) -> Settings:
    """Settings for a command that needs the database; migrations applied first."""
    from infra.store.migrations import migrate as apply_migrations

    settings = Settings.from_env()
    configure_logging(settings)
    if settings.database_url is None:
        raise SettingsError(
            "DATABASE_URL is not set (in development: `. .cardinal/env`, which `cardinal "
            "serve` writes, reaches its database)"
        )
    if migrate:
        apply_migrations(settings.database_url)
    return settings


# What each command family adds its commands to.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def positive_int(text: str) -> int:
    """An option that counts something: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value

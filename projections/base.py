"""What a projection is: tables of its own, and a function that applies log entries to them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from psycopg import AsyncConnection

from infra.store.log import LogEvent


class Projection(ABC):
    """A read model kept from the log.

    ``apply`` runs inside the transaction that also moves the projection's tracking
    position, so it must only write through ``conn`` and must be deterministic: applying
    the same entries to the same state gives the same rows.
    """

    name: ClassVar[str]
    # Tables created in each version's schema by the SQL function create_<name>_tables,
    # exposed to readers as views read_models.<name>_<table>.
    tables: ClassVar[tuple[str, ...]]

    @abstractmethod
    async def apply(
        self, conn: AsyncConnection[Any], schema: str, events: Sequence[LogEvent]
    ) -> None:
        """Apply these entries (ascending positions, none applied before) to ``schema``."""

    def forget(self) -> None:  # noqa: B027 - optional hook
        """Drop in-memory caches (after a rolled-back transaction, or a version switch)."""

    def bulk(self) -> BulkBuilder | None:
        """A faster way to build a version from scratch, if the projection has one."""
        return None


class BulkBuilder(Protocol):
    """Builds a projection version in memory from the whole log, then writes it at once.

    Entries it cannot take in go to ``set_aside``, with the reason. If ``write`` fails, the
    rebuild starts over without the bulk builder, applying page by page (and setting aside
    entry by entry): slower, but it gets past whatever the bulk path could not.
    """

    set_aside: list[tuple[LogEvent, str]]

    def add(self, events: Sequence[LogEvent]) -> None:
        """Take in the next entries (ascending positions)."""

    async def write(self, conn: AsyncConnection[Any], schema: str) -> None:
        """Write everything taken in to the (empty) tables of ``schema``."""


def schema_name(projection: str, version: int) -> str:
    return f"proj_{projection}_v{version}"

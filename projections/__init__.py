"""The projection runtime (feed protocol, exactly-once tracking) and the read models."""

from __future__ import annotations

from projections.base import Projection
from projections.catalog import CatalogProjection
from projections.statistics import StatisticsProjection
from projections.tally import TallyProjection

PROJECTIONS: dict[str, type[Projection]] = {
    "tally": TallyProjection,
    "catalog": CatalogProjection,
    "statistics": StatisticsProjection,
}


def projection(name: str) -> Projection:
    """A fresh instance of the named projection; KeyError names the known ones."""
    try:
        return PROJECTIONS[name]()
    except KeyError:
        known = ", ".join(PROJECTIONS)
        raise KeyError(f"no projection named {name!r}; the projections are {known}") from None

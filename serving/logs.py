"""Reading prediction logs back: the serving side's names for ``kfrelease.lake`` (docs/CONTRACTS.md).

The lake (``kfrelease.lake``) owns the log schema, the reader, the "latest label wins" rule and the join;
this module only keeps the names the release gates and the demo have always imported.
"""

from __future__ import annotations

from kfrelease.lake import BASE_COLUMNS, count_events, read_predictions
from kfrelease.lake.schema import LOG_BUCKET as BUCKET

__all__ = ["BASE_COLUMNS", "BUCKET", "count_events", "read_predictions"]

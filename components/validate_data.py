from kfp.dsl import Dataset, Input, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def validate_data(spec_yaml: str, rows: Input[Dataset], valid_rows: Output[Dataset], quarantined: Output[Dataset]):
    """Check rows against the dataset spec (columns, dtypes, ranges, nulls, unique id, ragged lines, minimum
    rows), a batch at a time; no value is coerced into a dtype it does not fit.

    Fails the run with every problem listed (file, column, lines, count) when the data is bad, unless the
    spec says ``on_invalid: quarantine``: then the invalid rows go on to ``quarantined``.

    Args:
        spec_yaml: the dataset spec (YAML text).
        rows: ingested rows.
        valid_rows: the valid rows with the declared dtypes.
        quarantined: the refused rows with their reason and source line (empty with ``on_invalid: reject``).
    """
    import pyarrow.parquet as pq

    from kfrelease.config import log_to_stderr
    from kfrelease.data.frames import read_frames
    from kfrelease.data.ingest import META_COLUMNS
    from kfrelease.data.spec import parse_spec
    from kfrelease.data.validate import validate_to_files

    log_to_stderr()
    columns = [c for c in pq.read_schema(rows.path).names if c not in META_COLUMNS]
    valid, invalid, _ = validate_to_files(
        parse_spec(spec_yaml), lambda: read_frames(rows.path), columns, valid_rows.path, quarantined.path
    )
    valid_rows.metadata["row_count"] = valid.rows
    quarantined.metadata["row_count"] = invalid.rows

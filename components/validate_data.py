from kfp.dsl import Dataset, Input, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def validate_data(spec_yaml: str, rows: Input[Dataset], valid_rows: Output[Dataset], quarantined: Output[Dataset]):
    """Check rows against the dataset spec (columns, dtypes, ranges, nulls, unique id, ragged lines, minimum
    rows); no value is coerced into a dtype it does not fit.

    Fails the run with every problem listed (file, column, lines, count) when the data is bad, unless the
    spec says ``on_invalid: quarantine``: then the invalid rows go on to ``quarantined``.

    Args:
        spec_yaml: the dataset spec (YAML text).
        rows: ingested rows.
        valid_rows: the valid rows with the declared dtypes.
        quarantined: the refused rows with their reason and source line (empty with ``on_invalid: reject``).
    """
    import logging

    import pandas as pd

    from kfrelease.data.spec import parse_spec
    from kfrelease.data.validate import validate

    logging.basicConfig(level=logging.INFO)
    checked = validate(pd.read_parquet(rows.path), parse_spec(spec_yaml))
    checked.valid.to_parquet(valid_rows.path, index=False)
    checked.invalid.to_parquet(quarantined.path, index=False)
    valid_rows.metadata["row_count"] = len(checked.valid)
    quarantined.metadata["row_count"] = len(checked.invalid)

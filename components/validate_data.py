from kfp.dsl import Dataset, Input, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def validate_data(spec_yaml: str, rows: Input[Dataset], valid_rows: Output[Dataset]):
    """Check rows against the dataset spec (columns, dtypes, ranges, nulls, unique id, minimum rows).

    Fails the run with every violation listed (file, column, line) when the data is bad.

    Args:
        spec_yaml: the dataset spec (YAML text).
        rows: ingested rows.
        valid_rows: the same rows with the declared dtypes.
    """
    import logging

    import pandas as pd

    from kfrelease.data.spec import parse_spec
    from kfrelease.data.validate import validate

    logging.basicConfig(level=logging.INFO)
    valid = validate(pd.read_parquet(rows.path), parse_spec(spec_yaml))
    valid.to_parquet(valid_rows.path, index=False)
    valid_rows.metadata["row_count"] = len(valid)

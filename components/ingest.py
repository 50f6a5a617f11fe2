from kfp.dsl import Dataset, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def ingest(spec_yaml: str, rows: Output[Dataset]) -> str:
    """Read every source object of a dataset from the ``raw`` bucket (data-engineer identity), a batch at a time.

    Args:
        spec_yaml: the dataset spec (YAML text) naming the source prefix and schema.
        rows: the unioned source rows as Parquet (CSV values as text), with ``__source``/``__line`` columns for
            error messages.

    Returns:
        The sources read, as JSON: ``[{"key", "etag", "rows"}]`` (lineage for the manifest).
    """
    import json

    from kfrelease.config import log_to_stderr
    from kfrelease.data.ingest import SourceSet
    from kfrelease.data.spec import parse_spec
    from kfrelease.storage import store_for

    log_to_stderr()
    spec = parse_spec(spec_yaml)
    with SourceSet(spec, store_for("data-engineer")) as sources:
        written = sources.write_rows(rows.path)
        read = sources.sources
    rows.metadata.update({"dataset": spec.name, "row_count": written.rows})
    return json.dumps([s.as_dict() for s in read])

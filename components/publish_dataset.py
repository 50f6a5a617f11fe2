from kfp.dsl import Dataset, Input

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def publish_dataset(spec_yaml: str, features: Input[Dataset], sources_json: str, run_id: str) -> str:
    """Publish an immutable curated version (content-hash id, manifest) and move ``latest`` to it.

    Args:
        spec_yaml: the dataset spec (YAML text).
        features: the rows to publish.
        sources_json: the sources read by ingest (lineage).
        run_id: the pipeline run that publishes.

    Returns:
        The published version id.
    """
    import json
    import logging

    import pandas as pd

    from kfrelease.data.ingest import Source
    from kfrelease.data.publish import publish
    from kfrelease.data.spec import parse_spec
    from kfrelease.storage import store_for

    logging.basicConfig(level=logging.INFO)
    sources = [Source(**s) for s in json.loads(sources_json)]
    dv = publish(pd.read_parquet(features.path), parse_spec(spec_yaml), store_for("data-engineer"), sources, run_id)
    print(f"published {dv.dataset} version {dv.version} ({dv.row_count} rows)")
    return dv.version

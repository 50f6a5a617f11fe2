from kfp.dsl import Dataset, Input

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def publish_dataset(
    spec_yaml: str, features: Input[Dataset], quarantined: Input[Dataset], sources_json: str, run_id: str
) -> str:
    """Publish an immutable curated version (content-hash id, manifest) and move ``latest`` to it.

    Refused, with the model's name, when the version would remove or retype a column that a production
    model uses.

    Args:
        spec_yaml: the dataset spec (YAML text).
        features: the rows to publish.
        quarantined: the rows validation refused (written beside the version when there are any).
        sources_json: the sources read by ingest (lineage).
        run_id: the pipeline run that publishes.

    Returns:
        The published version id.
    """
    import json
    import logging

    from kfrelease.config import log_to_stderr
    from kfrelease.data.frames import file_digest
    from kfrelease.data.ingest import Source
    from kfrelease.data.publish import publish_files
    from kfrelease.data.spec import parse_spec
    from kfrelease.storage import store_for

    log_to_stderr()
    sources = [Source(**s) for s in json.loads(sources_json)]
    dv = publish_files(
        parse_spec(spec_yaml),
        store_for("data-engineer"),
        file_digest(features.path),
        sources,
        run_id,
        quarantine=file_digest(quarantined.path),
    )
    logging.getLogger(__name__).info(
        "published %s version %s (%d rows, %d quarantined)",
        dv.dataset,
        dv.version,
        dv.row_count,
        dv.manifest.get("quarantined_count", 0),
    )
    return dv.version

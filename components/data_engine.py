from kfrelease.components.base import kfrelease_component


@kfrelease_component
def data_engine(spec_yaml: str) -> str:
    """Where this dataset is published: the dataset spec's ``engine`` (``embedded`` or ``spark``).

    Args:
        spec_yaml: the dataset spec (YAML text).

    Returns:
        ``embedded`` (the ingest, validate, features and publish steps) or ``spark`` (one SparkApplication).
    """
    from kfrelease.config import log_to_stderr
    from kfrelease.data.spec import parse_spec

    log_to_stderr()
    return parse_spec(spec_yaml).engine

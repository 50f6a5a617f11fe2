from kfp.dsl import Dataset, Input, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def engineer_features(spec_yaml: str, valid_rows: Input[Dataset], features: Output[Dataset], features_dir: str = ""):
    """Run the feature-engineering step named in the dataset spec on each batch of rows (without it, the valid
    rows as they are), and leave out the meta columns: the rows to publish.

    Args:
        spec_yaml: the dataset spec (YAML text); ``features: module:function`` names the step.
        valid_rows: validated rows.
        features: rows with engineered columns added.
        features_dir: a local folder where the step's module may be (the dataset spec's, on the embedded stack);
            on the cluster the module is installed in the project image.
    """
    from kfrelease.config import log_to_stderr
    from kfrelease.data.features import features_to_file
    from kfrelease.data.spec import parse_spec

    log_to_stderr()
    written = features_to_file(parse_spec(spec_yaml), valid_rows.path, features.path, (features_dir,))
    features.metadata["row_count"] = written.rows

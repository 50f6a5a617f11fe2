from kfp.dsl import Dataset, Input, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def engineer_features(spec_yaml: str, valid_rows: Input[Dataset], features: Output[Dataset]):
    """Run the feature-engineering step named in the dataset spec (a no-op when it names none).

    Args:
        spec_yaml: the dataset spec (YAML text); ``features: module:function`` names the step.
        valid_rows: validated rows.
        features: rows with engineered columns added.
    """
    import pandas as pd

    from kfrelease.data.features import apply_features
    from kfrelease.data.spec import parse_spec

    out = apply_features(pd.read_parquet(valid_rows.path), parse_spec(spec_yaml))
    out.to_parquet(features.path, index=False)

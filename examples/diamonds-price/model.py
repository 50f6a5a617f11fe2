"""Model code of the diamonds example (``build: model.py:build_model`` in model.yaml).

cut, color and clarity arrive as text, in training (the curated data keeps the values, no codes) and from
clients (``{"cut": "Ideal", ...}``); the pipeline's own ``OneHotEncoder`` turns them into numbers, so the
registered model takes the values as they are. The input schema lists each text column's known values: a
value outside them is answered with a 400 naming the column before the model sees it."""

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

NUMBERS = ["carat", "depth", "table", "x", "y", "z"]
CATEGORIES = ["cut", "color", "clarity"]
#: boosting iterations (merge 2 of the example: 100, better): each fit takes well under a second on 2,000 rows
ITERATIONS = 20


def build_model():
    """One-hot encoded categories beside the numbers, then histogram gradient boosting."""
    encode = ColumnTransformer(
        [("numbers", "passthrough", NUMBERS), ("categories", OneHotEncoder(handle_unknown="ignore"), CATEGORIES)]
    )
    return make_pipeline(encode, HistGradientBoostingRegressor(max_iter=ITERATIONS, random_state=0))

"""kfrelease: from a merge to ``main`` to a watched production model, on Kubeflow Pipelines and KServe.

The core library is plain Python with no KFP import at module level; KFP components live in
``kfrelease.components``, pipelines in ``kfrelease.pipelines``, serving code in ``kfrelease.serving``.
"""

__version__ = "0.1.0"


def load_model(name: str, stage: str | None = "production", version: str | None = None, **kwargs):
    """The fitted estimator of a registered model (``kfrelease.load_model("name", stage="production")``, or
    ``version="V1.2.0"``; ``experiment=True`` for the experiments space); see ``kfrelease.training.experiments``."""
    # cycle: every kfrelease module imports this package first
    from kfrelease.training.experiments import load_model as _load

    return _load(name, stage, version, **kwargs)

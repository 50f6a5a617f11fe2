"""kfrelease: from a merge to ``main`` to a watched production model, on Kubeflow Pipelines and KServe.

The core library is plain Python with no KFP import at module level; KFP components live in
``kfrelease.components``, pipelines in ``kfrelease.pipelines``, serving code in ``kfrelease.serving``.
"""

__version__ = "0.1.0"

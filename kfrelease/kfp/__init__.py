"""Kubeflow Pipelines plumbing: running compiled pipelines on ``kfp.local`` and compiling them (``runner``), and
submitting to a KFP API server on a cluster (``submit``)."""

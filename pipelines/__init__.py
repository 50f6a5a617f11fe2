"""KFP v2 pipelines built from kfrelease's components. ``kfrelease compile`` writes each as YAML."""

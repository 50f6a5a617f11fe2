"""Training: the model spec a data scientist commits, training, validation verdicts, the merge trigger and
its run records. Plain Python; the KFP components in ``kfrelease.components`` are thin wrappers over it."""

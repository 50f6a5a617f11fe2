"""The data engineers' data pipeline: ingest raw sources, validate, engineer features, publish curated
versions. Plain functions over pandas; the KFP components in ``kfrelease.components`` wrap them."""

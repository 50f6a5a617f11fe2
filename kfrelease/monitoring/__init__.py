"""Monitoring: windowed quality and drift per model version, Prometheus gauges and alerts, auto retrain."""

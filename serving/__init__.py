"""KServe serving code: predictor, log sink, feedback, gateway and manifest builders (kfrelease.serving)."""

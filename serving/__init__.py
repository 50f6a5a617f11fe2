"""The model server (``kfrelease.serving``): what runs in the KServe predictor container and in the embedded
stack's model-server processes: the predictor (``predictor``), the many-model host (``host``), request decoding
(``decode``), the fast lane past KServe's request handling (``fastlane``), the inference cache (``cache``), the
prediction logger (``logger``), metrics (``metrics``) and native thread pinning (``threads``).

The embedded stack's serving services (gateway, hold, model-server slots and hosts, warm spare, model-file
cache) live in ``kfrelease.stack``; the collectors that receive what serving emits (log sink, feedback) in
``kfrelease.collectors``, beside the lake they write to."""

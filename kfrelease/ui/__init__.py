"""The read-only web UI of the embedded stack (the Kubeflow UI's role there): models and versions with
stages and lineage, training runs with their steps, releases with each decision and its evidence,
monitoring charts and every report. Served by the stack as service ``ui`` (``kfrelease ui`` prints its URL).

``views`` reads (core functions only), ``monitoring`` builds the charts, ``app`` is the HTTP side,
``services`` declares the service, ``python -m kfrelease.ui --port N`` runs it.
"""

"""The collectors: services that receive what serving emits and write it to the lake (``kfrelease.lake``):
the log sink (``sink``: KServe InferenceLogger CloudEvents into ``inference-logs``) and the feedback service
(``feedback``: ground truth into ``feedback``). Both run on the embedded stack and as Deployments on a cluster
(``kfrelease.k8s.render.workloads``)."""

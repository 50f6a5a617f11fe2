"""The release's cluster driver: it moves traffic by patching the rendered objects on a live cluster and
holds the model's release Lease (``kserve.KServeTrafficDriver``, ``patches.traffic_patches``)."""

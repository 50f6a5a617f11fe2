"""Images: the one project image every component and the ServingRuntime run (``project``) and model images in
KServe's ModelCar layout, built and pushed without a container daemon (``oci``)."""

"""The decorator every kfrelease component uses: KFP's lightweight component on the project image.

Only the compiler imports this module: KFP's executor sets ``_KFP_RUNTIME=true``, under which ``kfp.dsl`` has no
``component``, so a component's body imports nothing from here (its logging set-up is
``kfrelease.config.log_to_stderr``)."""

import functools

from kfp import dsl

from kfrelease.images.project import project_image

# The project image already has kfp and kfrelease installed, so no component runs a per-step
# `pip install kfp` (it cost ~1.7 s per step locally and needs PyPI from the cluster). The image given
# here is only what KFP records at import; `kfrelease.images.project.compile_package` writes the image of the
# moment (KFRELEASE_IMAGE at compile time) into every executor of a compiled package.
kfrelease_component = functools.partial(dsl.component, base_image=project_image(), install_kfp_package=False)

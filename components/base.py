"""The decorator every kfrelease component uses: KFP's lightweight component on the project image."""

import functools

from kfp import dsl

from kfrelease.images import project_image

kfrelease_component = functools.partial(dsl.component, base_image=project_image())

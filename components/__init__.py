"""KFP v2 components: thin, typed wrappers over kfrelease's core functions; one module per component.

Every component runs on the one project image (``kfrelease.images.project.project_image()``) and imports
``kfrelease`` inside its body, as lightweight components must.
"""

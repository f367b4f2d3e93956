"""Stage ``augment``: seeded warps of the training images that move their masks with them (``warps``)."""

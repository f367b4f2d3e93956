"""The embedded default data: DIARETDB1-like images in the official layout (``generator``), drawn in two styles
(``realistic``, ``easy``) with shared drawing helpers (``drawing``); ``calibration`` compares the realistic style
with real images.
"""

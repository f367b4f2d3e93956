"""Stage ``evaluate``: predict the test images and choose thresholds (``evaluate``), score a folder of
predictions (``score``, with ``metrics``, ``froc``, ``bootstrap`` and the simulated ``truth``), clean predictions
(``postprocess``, ``anatomy``); ``predict`` is the command-line tool for new images.
"""

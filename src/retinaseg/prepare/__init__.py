"""Stage ``prepare``: lesion maps into class planes (``masks``), the one crop-and-resize of every model input
(``fundus``, shared with ``evaluation.predict``), and the prepared array sets (``sets``).
"""

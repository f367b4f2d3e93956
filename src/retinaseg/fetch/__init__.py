"""Stages ``source`` and ``fetch``: fingerprint ``data.source`` (``source``), then download, check and unpack
DIARETDB1 or generate its stand-in (``download``, with ``synthetic``).
"""

"""Stage ``compare``: every model side by side in ``comparison.md`` and ``comparison.png`` (``report``)."""

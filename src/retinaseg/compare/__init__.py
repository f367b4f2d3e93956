"""Stage ``compare``: every model side by side in ``comparison.md`` and ``comparison.png`` (``report``).

``docs`` is no stage's: ``make docs`` renders ``docs/results.md`` from the committed metrics with it.
"""

"""What every stage shares: typed params (``params``) and typed outputs (``outputs``: the run.json and eval.json
that later stages read back), tasks and their class planes (``tasks``), the official DIARETDB1 layout
(``layout``), array sets (``arrays``), all-or-nothing writes (``atomic``), one-line errors (``errors``, ``stage``)
and process pools whose workers end with the stage (``workers``).
"""

"""What every stage shares: typed params (``params``), tasks and their class planes (``tasks``), the official
DIARETDB1 layout and its loader (``layout``, ``dataset``), array sets (``arrays``), all-or-nothing writes (``atomic``),
the typed run.json and eval.json that training and evaluation write for later stages (``outputs``),
one-line errors (``errors``, ``stage``) and the figures `dvc exp show` lists (``summary``).
"""

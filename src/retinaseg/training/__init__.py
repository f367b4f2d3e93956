"""Stages ``train`` and ``transfer``: the two-phase fit (``fit``), progress a killed run resumes from
(``resume``), a polite stop (``stopping``, ``starters``), tf.distribute strategies (``distribute``) and
precision and threads (``hardware``).
"""

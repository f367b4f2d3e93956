"""Performance benchmarks of the retinaseg pipeline: ``python -m benchmarks [--tiny]``.

Every figure is measured in one process run, after warm-up, as the median of several
repetitions, and written to ``metrics/bench.json``; see ``benchmarks.__main__``.
"""

from retinaseg.core.stage import quiet_tensorflow

# Before any module of this package imports TensorFlow.
quiet_tensorflow()

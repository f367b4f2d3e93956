"""Choose numeric precision and threads from the hardware, in one place.

bfloat16 pays off only where the CPU multiplies it natively (AVX512-BF16 or AMX) or on
a GPU; elsewhere TensorFlow emulates it and it is many times slower than float32.
"""

from __future__ import annotations

from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields as the kernel reports them (empty where unknown)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """CPU feature flags as the kernel reports them (empty where unknown)."""
    return set(cpu_info(cpuinfo).get("flags", "").split())


def has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(requested: str, flags: set[str] | None = None, gpu: bool | None = None) -> str:
    """Map ``auto`` to ``bfloat16`` on hardware that runs it natively, else ``float32``."""
    if requested != "auto":
        return requested
    flags = cpu_flags() if flags is None else flags
    gpu = has_gpu() if gpu is None else gpu
    return "bfloat16" if gpu or any(flag in flags for flag in BF16_CPU_FLAGS) else "float32"


def configure(precision: str, threads: int = 0) -> str:
    """Set the Keras dtype policy and TensorFlow's thread pools; return the precision used.

    ``threads == 0`` lets TensorFlow use every core. Must run before any model is built.
    """
    import keras
    import tensorflow as tf

    precision = resolve_precision(precision)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    return precision

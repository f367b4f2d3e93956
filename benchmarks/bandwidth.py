"""Main-memory bandwidth: a STREAM-like triad ``a = b + s * c`` on float32 arrays far larger than the last-level cache.

NumPy has no fused multiply-add, so each thread walks its own contiguous slice in blocks that
stay in its L2 cache: ``s * c`` into a scratch block, then ``+ b`` into ``a``. Main memory then
sees what STREAM's triad moves: b and c read, a written. GB/s counts those 3 arrays x 4 bytes
per element, as STREAM does; the read of a's lines before they are written (write-allocate)
is a fourth array's traffic that is not counted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.config import Config
from benchmarks.measure import rate, repeat, stats

#: Elements of one block: 256 KiB of float32, within the L2 cache of current cores.
BLOCK = 2**16
ARRAYS_MOVED = 3
MIB = 1024 * 1024
#: Suffixes of sysfs cache sizes ("32768K").
SIZE_UNITS = {"K": 1024, "M": MIB}
#: Assumed when the kernel does not describe the caches.
FALLBACK_LAST_LEVEL_CACHE = 32 * MIB


def last_level_cache_bytes(cpu: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """Size of the highest-level cache that the first CPU sees, from sysfs."""
    sizes = {}
    for index in cpu.glob("index*"):
        try:
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        sizes[level] = int(size[:-1]) * SIZE_UNITS[size[-1]] if size[-1] in SIZE_UNITS else int(size)
    return sizes[max(sizes)] if sizes else FALLBACK_LAST_LEVEL_CACHE


def triad(cfg: Config, threads: int) -> dict:
    """GB/s of the triad over ``threads`` threads, on arrays of ``cfg.triad_cache_multiple`` x the last-level cache
    (at least ``cfg.triad_min_mib``)."""
    cache = last_level_cache_bytes()
    elements = max(cfg.triad_min_mib * MIB, cfg.triad_cache_multiple * cache) // 4
    b = np.random.default_rng(0).random(elements, dtype=np.float32)
    c, a = b[::-1].copy(), np.empty_like(b)
    scale = np.float32(3.0)
    bounds = np.linspace(0, elements, threads + 1).astype(int)
    scratch = [np.empty(BLOCK, np.float32) for _ in range(threads)]

    def slice_of(thread: int) -> None:
        block = scratch[thread]
        for start in range(bounds[thread], bounds[thread + 1], BLOCK):
            stop = min(start + BLOCK, bounds[thread + 1])
            partial = block[:stop - start]
            np.multiply(c[start:stop], scale, out=partial)
            np.add(partial, b[start:stop], out=a[start:stop])

    with ThreadPoolExecutor(threads) as pool:
        seconds = repeat(lambda: list(pool.map(slice_of, range(threads))), cfg.warmup, cfg.reps)
    if not np.array_equal(a[:BLOCK], b[:BLOCK] + scale * c[:BLOCK]):
        raise RuntimeError("the triad computed something else")
    moved = ARRAYS_MOVED * 4 * elements
    return {"method": f"a = b + s*c, float32, numpy in {BLOCK}-element blocks on {threads} thread(s); GB/s counts "
                      f"{ARRAYS_MOVED} arrays x 4 bytes per element (read b and c, write a), not the write-allocate "
                      "read of a",
            "threads": threads, "elements": elements, "array_mib": elements * 4 / MIB,
            "last_level_cache_mib": cache / MIB, "bytes_per_repetition": moved,
            "seconds": stats(seconds), "gbs": rate(moved / 1e9, seconds)}

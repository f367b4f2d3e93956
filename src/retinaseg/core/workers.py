"""Process pools whose workers end with the process that made them, however it ends (SIGKILL included).

A worker left behind by a stage killed with ``kill -9`` (or by the out-of-memory killer) blocks for
good writing its result to a pipe nobody reads, holding its memory. On Linux each worker asks the
kernel for SIGKILL when its parent ends (``prctl(PR_SET_PDEATHSIG)``). The kernel delivers it at
once and whatever the worker is doing: blocked in a write, or deep in C code that holds the GIL,
where a thread polling for the parent would not get to run. Two conditions make it hold:

- the workers are forked (``fork`` context), so their parent is this process; a forkserver's
  workers would be children of the server;
- the kernel sends the signal when the *thread* that started a worker ends, and a pool starts its
  workers from the thread that submits its first task: submit from a thread that outlives the pool
  (a ``with`` block in one function does).

A parent that ends before its worker has asked is caught too: the worker has already been handed to
another process (``os.getppid()`` changed) and ends at once. Elsewhere than on Linux the pool is a
plain one.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

#: The option of ``prctl`` (<linux/prctl.h>) that sets the signal a process gets when its parent ends.
PR_SET_PDEATHSIG = 1


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that are killed as soon as this process ends (on Linux)."""
    if not sys.platform.startswith("linux"):
        return ProcessPoolExecutor(workers)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_end_with_parent, initargs=(os.getpid(),))


def _end_with_parent(parent: int) -> None:
    """First thing in every worker: SIGKILL when ``parent`` ends, and at once if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(code)}")
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)

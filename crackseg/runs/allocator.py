"""Keep the memory a training step frees, for the next step, instead of handing it back.

glibc's malloc serves an allocation above its mmap threshold (at most 32 MiB by default)
with a fresh mapping and unmaps it when it is freed. A training step allocates the same large
tensors every step: the volume convolution's weight gradient (59 MB in float32 for the
paper's network), a batch's activations. Every fresh mapping faults its pages in on first
touch, ~1 µs per 4 KiB page: 15 ms a step for that gradient alone, more than its arithmetic.
Raising the mmap and trim thresholds keeps such blocks in malloc's heap, which hands them out
again. Measured (benchmarks/README.md, "Closing the gap"): bf16 training of the paper's
network 8 % faster at batch 1 and 37 % at batch 8 on an Intel Xeon with AMX. The cost is
that of any caching allocator (jemalloc, tcmalloc): the process keeps its peak memory until
it ends instead of returning it between steps.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap, and this much free memory at its top is kept
#: (mallopt takes an int).
KEEP_BYTES = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 2 GiB for reuse (the module docstring);
    False, changing nothing, where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    kept = mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1
    if not kept:
        log.warning("glibc's malloc refused larger mmap and trim thresholds: steps run slower")
    return kept

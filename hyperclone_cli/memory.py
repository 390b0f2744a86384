"""Process memory policy for verification (it reads and drops one module's weights after
another)."""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
# glibc serves an allocation this large or larger with a mapping of its own, unmapped when
# freed. Left alone, it raises that threshold (up to 32 MB) each time such a block is freed,
# and keeps later ones in its heaps, which rarely shrink: a module's weights, read and
# dropped one after another, stayed resident, and expand's streamed verification of
# SmolLM2 x2 peaked at 830 MB (580 MB with this; 500 MB with the head read in row blocks,
# against 450 MB without verification). Not for the writing: its chunk temporaries reuse
# heap pages, and a fresh mapping per chunk made noisy expansions ~25 % slower.
MMAP_THRESHOLD = 1 << 20


def lean_malloc(threshold: int = MMAP_THRESHOLD) -> bool:
    """Give freed tensor memory back to the system at once (glibc on Linux; elsewhere a
    no-op). True when the allocator took the setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc, or no mallopt
        return False

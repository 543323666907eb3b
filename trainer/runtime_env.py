"""Settings of torch's CPU libraries that ``python -m trainer`` makes before torch loads (they
are read once, at load). A value the user set is kept. Measured by ``make bench`` (its worker
processes inherit them; docs/performance.md):

- ``THP_MEM_ALLOC_ENABLE=1``: torch's CPU allocator asks for transparent huge pages on blocks
  of 2 MB and more (a no-op where THP is off). Training reallocates the same activations every
  step: page faults fell from about 14,000 to 3,000 per bench epoch and training throughput
  rose about 4 % (alternating runs, medians).
- ``MKL_DISABLE_FAST_MM=1``: MKL's own memory manager keeps the buffers its matrix products
  allocate, per thread, for the process's life. On an Intel host (AVX-512, AMX) they held
  45 MB after the hybrid's first training step, 60 MB after an epoch of the bench's batch
  shapes: its peak 128 MB against 86 without, the lstm's 404 against 355, at the same speed
  (hybrid 1.02x, lstm 1.00x, batch by batch in turn).

    >>> apply({"MKL_DISABLE_FAST_MM": "0"})  # the user's value kept
    {'THP_MEM_ALLOC_ENABLE': '1', 'MKL_DISABLE_FAST_MM': '0'}
"""

from __future__ import annotations

import os

RUNTIME_ENV = {"THP_MEM_ALLOC_ENABLE": "1", "MKL_DISABLE_FAST_MM": "1"}


def apply(env: dict | None = None) -> dict:
    """``RUNTIME_ENV`` under what ``env`` (the process's environment by default) already
    says; written into the process's environment when ``env`` is None. Returns the settings."""
    target = os.environ if env is None else env
    for key, value in RUNTIME_ENV.items():
        target.setdefault(key, value)
    return {key: target[key] for key in RUNTIME_ENV}

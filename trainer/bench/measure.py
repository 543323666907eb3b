"""Instruments for the benchmark: memory (RSS, malloc's in-use bytes), FLOPs, the machine's
matrix-multiply rate, and what the machine is. ``trainer.bench.run`` decides what to run with them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
import threading
import time

import numpy as np
import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads at ``n`` inside the block, as they were after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class HeapPeak:
    """Peak of malloc's in-use bytes (glibc mallinfo2), sampled every half millisecond (less
    often when a call is slow).

    What the process allocated and still holds, torch's tensors included (torch releases the
    GIL in its kernels, so the sampler runs during them); unlike RSS, no library code pages
    and no memory malloc keeps after a free.
    """

    def __init__(self):
        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        self.libc = ctypes.CDLL("libc.so.6")
        self.libc.mallinfo2.restype = Info
        self.peak, self._stop = 0, None

    def in_use(self) -> int:
        info = self.libc.mallinfo2()
        return info.uordblks + info.hblkhd

    def __enter__(self):
        self._stop = threading.Event()
        self.peak = self.in_use()

        def sample():
            # mallinfo2 walks malloc's free lists under its arena locks, and the sampler needs
            # a core and the GIL: on a busy machine its wake-ups come late and stall the
            # training threads, so it waits ten times as long as its last wake-up came late
            # (busy at most a tenth of the time); the memory figure's repeats give a missed
            # peak more chances
            wait = 0.0005
            due = time.perf_counter() + wait
            while not self._stop.wait(wait):
                self.peak = max(self.peak, self.in_use())
                now = time.perf_counter()
                wait = max(0.0005, 10 * (now - due))
                due = now + wait

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.in_use())


def count_flops(model, batches: list[dict]) -> int:
    """FLOPs of forward + backward over ``batches`` (matmuls, convolutions, attention)."""

    aten = torch.ops.aten
    cpu_flash = {  # the CPU flash-attention kernels are not in the default registry
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *a, **kw: sdpa_backward_flop_count(g, q, k, v),
    }
    counter = FlopCounterMode(display=False, custom_mapping=cpu_flash)
    with counter:
        for batch in batches:
            model(**batch).logsumexp(-1).sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def mm_buffers(n: int) -> tuple:
    return torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)


def matmul_rate(n: int, repeats: int, buffers: tuple | None = None) -> dict:
    """fp32 torch.mm FLOP rate on square n x n matrices. ``buffers`` (from ``mm_buffers``) are
    reused rather than allocated and freed, so a run in between others does not hand 200 MB
    back to the kernel for the next workload to fault in again."""
    a, b, c = buffers or mm_buffers(n)
    torch.mm(a, b, out=c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t0)
    flop = 2 * n ** 3
    return {"size": n, "flops_per_second": flop / float(np.median(times)),
            "best_flops_per_second": flop / min(times), "repeats": repeats}


def machine(threads: int) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": list(os.getloadavg())}

"""How loaded the machine was while a figure was taken: the CPU time every other process took,
and the time the hypervisor stole, from /proc.

    w = Window()
    ...                          # the measurement
    w.stop()["under_load"]       # others' CPU time and steal per wall second > THRESHOLD_CORES

Others' time = the machine's busy time (/proc/stat: user, nice, system, irq, softirq, over all
CPUs) minus this process's own CPU time and that of its children it has waited for (a bench
worker reports its own windows; the parent reads its children's time once they have exited).
/proc/stat counts in clock ticks (10 ms here), so a window of a tenth of a second can be off by
a fifth of a core: a figure's load is the sum over all its repeats' windows (``combine``).
"""

from __future__ import annotations

import os
import time

HZ = os.sysconf("SC_CLK_TCK")
# Under load: others took more than a tenth of a core on average, or the hypervisor stole as
# much. The bench runs one torch thread per core, and a parallel region waits for its slowest
# thread: a neighbour holding a core a tenth of the time can delay a tenth of the regions, more
# than the margins the targets are judged at (a loader overhead of 3 %). An idle machine's own
# services take a few hundredths of a core.
THRESHOLD_CORES = 0.1


def snapshot() -> dict:
    """The machine's busy and stolen CPU seconds so far, this process tree's, and the clock."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(x) for x in f.readline().split()[1:9])
    t = os.times()
    return {"wall": time.monotonic(), "busy": (user + nice + system + irq + softirq) / HZ,
            "steal": steal / HZ,
            "own": time.process_time() + t.children_user + t.children_system}


def between(a: dict, b: dict) -> dict:
    """The load of the window from snapshot ``a`` to snapshot ``b``."""
    seconds = max(b["wall"] - a["wall"], 1e-9)
    others = max(0.0, (b["busy"] - a["busy"]) - (b["own"] - a["own"]))
    return verdict({"seconds": seconds, "others_cpu_seconds": others,
                    "steal_seconds": b["steal"] - a["steal"],
                    "own_cpu_seconds": b["own"] - a["own"]})


def verdict(w: dict) -> dict:
    """``w`` with its per-wall-second rates and whether it counts as under load."""
    s = w["seconds"]
    out = dict(w, others_cores=w["others_cpu_seconds"] / s, steal_cores=w["steal_seconds"] / s,
               cores=os.cpu_count())
    out["under_load"] = bool(out["others_cores"] > THRESHOLD_CORES
                             or out["steal_cores"] > THRESHOLD_CORES)
    return out


def combine(windows: list[dict]) -> dict:
    """The load over several windows: their sums, and the largest single window's."""
    windows = [w for w in windows if w]
    if not windows:
        return {}
    sums = {k: sum(w[k] for w in windows) for k in
            ("seconds", "others_cpu_seconds", "steal_seconds", "own_cpu_seconds")}
    out = verdict(sums)
    out["windows"] = len(windows)
    out["max_window_others_cores"] = max(verdict(w)["others_cores"] for w in windows)
    return out


class Window:
    """One measurement window: started when made, ``stop()`` returns its load."""

    def __init__(self):
        self.start = snapshot()

    def stop(self) -> dict:
        return between(self.start, snapshot())


def describe(load: dict) -> str:
    """One line: others' cores and steal over the window, and the verdict."""
    if not load:
        return "load not measured"
    return (f"others {load['others_cores']:.2f} cores, steal {load['steal_cores']:.2f} "
            f"over {load['seconds']:.1f} s of {load['cores']} cores: "
            f"{'UNDER LOAD' if load['under_load'] else 'quiet'}")

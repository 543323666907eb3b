"""The worker pool of an extraction run: clips done in parallel processes, a dead worker's clip
reported, Ctrl-C leaving every clip file whole.

    from functools import partial
    for result in run_clips(todo, partial(work, s=settings, out=out), out, workers=2):
        ...  # {"rel", "reason", "seconds", "timing"}, in the order clips finish

``work(clip)`` does one clip and returns its result dict, never raising for a bad file; it must
be picklable (a module-level function, or a ``functools.partial`` of one), since workers are
spawned. While a worker holds a clip, its marker file ``OUT/.extract-worker-PID`` names the
clip, so that a worker the kernel kills (out of memory) or a native crash takes only its own
clip with it: that clip is reported, and the rest go on in a fresh pool.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from trainer.extract.clips import MediaClip
from trainer.store.files import atomic_write_bytes as atomic_write

MARKERS = ".extract-worker-*"
DIED = "its worker process died (out of memory, or a crash in a native library)"


def lost(clip: MediaClip, reason: str) -> dict:
    """The result of a clip that no worker finished."""
    return {"rel": clip.rel, "reason": reason, "seconds": 0.0, "timing": {}}


def one_core() -> None:
    """Keep OpenCV (the face extractors use it) on this worker's own core. Its thread pool
    otherwise spins beside the decoder: measured on 90 s of 480x360 video, decoding took 4.9 s
    with it and 1.5 s without, and the face stage was no faster with it (10.7 s against 11.3)."""
    try:
        import cv2  # OpenCV (the extract extra): loaded where faces are found
    except ImportError:
        return
    cv2.setNumThreads(1)


_MARKER: Path | None = None  # in a worker process: names the clip it is working on
_WORKING = False  # in a worker process: it holds a clip
_STOPPING = False  # in a worker process: Ctrl-C came while it held none


def _interrupted(signum, frame) -> None:
    """A worker's Ctrl-C: the clip in hand stops (its file is written whole or not at all).
    Between clips it is only noted, and the next clip is refused: raised there, inside the
    pool's own read of its queue, it would print a traceback and break the pool, which would
    then be made anew and go on."""
    global _STOPPING
    if _WORKING:
        raise KeyboardInterrupt
    _STOPPING = True


def _worker_init(out: Path) -> None:
    """Set up a worker: its Ctrl-C, its marker file's name, OpenCV on one core, and a SIGTERM
    (the pool ending the other workers after one died) that takes the marker away."""
    global _MARKER
    signal.signal(signal.SIGINT, _interrupted)
    _MARKER = out / f".extract-worker-{os.getpid()}"
    one_core()

    def ended(signum, frame):
        _MARKER.unlink(missing_ok=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, ended)


def _marked(work: Callable[[MediaClip], dict], clip: MediaClip) -> dict:
    """``work(clip)`` in a worker, its marker naming the clip meanwhile (written whole)."""
    global _WORKING
    _WORKING = True  # before the check: a Ctrl-C between the two raises in the handler
    try:
        if _STOPPING:
            raise KeyboardInterrupt
        atomic_write(_MARKER, clip.rel.encode())
        return work(clip)
    finally:
        _WORKING = False
        _MARKER.unlink(missing_ok=True)


@contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Workers spawned inside start with Ctrl-C ignored until their handler is in place (an
    ignored signal is the one disposition a new process inherits; SIGINT blocked in this
    thread did not stay blocked through multiprocessing's start of a process here): one that
    came while a worker imported would print its traceback.
    This process ignores it too for the milliseconds it takes to start them. Only in the main
    thread, the one where Python sets signal handlers."""
    before = signal.getsignal(signal.SIGINT)  # None: set outside Python, left be
    if threading.current_thread() is not threading.main_thread() or before is None:
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def run_clips(todo: list[MediaClip], work: Callable[[MediaClip], dict], out: Path, workers: int,
              opencv: bool = True, isolate: bool = False) -> Iterator[dict]:
    """Yield ``work(clip)`` for each clip as it finishes: in this process for one worker (with
    OpenCV on one core when ``opencv``) unless ``isolate``, else in a pool of processes (one
    for one worker; spawned: a fresh
    interpreter, so no decoder or detector state or thread is copied from this one; a script
    calling ``extract`` with workers needs the usual ``if __name__ == "__main__":``). A worker
    that dies takes only its own clip with it: that clip is yielded as lost, the pool is made
    anew, and the rest go on. On Ctrl-C, clips not started are dropped."""
    if not isolate and (workers <= 1 or len(todo) <= 1):
        if opencv and todo:
            one_core()
        for clip in todo:
            yield work(clip)
        return

    ctx = multiprocessing.get_context("spawn")
    queue, blind_breaks = list(todo), 0
    for stale in out.glob(MARKERS):  # left by a run that was killed
        stale.unlink(missing_ok=True)
    while queue:
        with ProcessPoolExecutor(min(workers, len(queue)), mp_context=ctx,
                                 initializer=_worker_init, initargs=(out,)) as pool:
            with _ctrl_c_ignored():  # submit spawns the workers
                futures = {pool.submit(_marked, work, clip): clip for clip in queue}
            try:
                for fut in as_completed(futures):
                    result = fut.result()
                    del futures[fut]
                    yield result
                queue = []
            except BrokenProcessPool:
                finished = [f for f in futures if f.done() and f.exception() is None]
                for fut in finished:  # done before the break, not yet yielded
                    yield futures.pop(fut).result()
                queue = list(futures.values())
            finally:  # Ctrl-C: drop what has not started; a clip being written stays atomic
                for fut in futures:
                    fut.cancel()
        dead = {m.read_text() for m in out.glob(MARKERS)}  # the pool has ended
        for m in out.glob(MARKERS):
            m.unlink(missing_ok=True)
        for clip in [c for c in queue if c.rel in dead]:
            queue.remove(clip)
            yield lost(clip, DIED)
        blind_breaks += bool(queue) and not dead
        if blind_breaks > 2:  # workers die with no clip to blame: stop retrying them
            for clip in queue:
                yield lost(clip, "not extracted: worker processes kept dying")
            return

"""Worker processes that leave nothing behind: on Ctrl-C, an error or a kill -9 of the parent
every worker ends, so no orphan keeps an output folder locked."""

import contextlib
import math
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any

import psutil

from vicap_utils.ops.io import VicapError
from vicap_utils.ops.progress import progress


def worker_count(workers: int | None) -> int:
    """The number of worker processes: all cores by default; refused outside 1..limit."""
    limit = max(64, 4 * (os.cpu_count() or 1))
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= limit:
        raise VicapError(f"--workers must be between 1 and {limit} (got {workers})")
    return workers


def process_map(func: Callable[[Any], Any], items: Sequence[Any], workers: int, desc: str,
                unit: str) -> list[Any]:
    """`func` (a module-level function) over `items`, in input order, in `workers` processes
    under a progress bar. On Ctrl-C or any error the queued calls are cancelled, workers ended."""
    chunk = max(1, min(64, len(items) // (workers * 8)))  # ~8 per worker: a smooth bar, little IPC
    pool = ProcessPoolExecutor(min(workers, math.ceil(len(items) / chunk)),
                               mp_context=_pool_context(), initializer=_worker_start,
                               initargs=(os.getpid(),))
    try:
        results = pool.map(func, items, chunksize=chunk)  # forks before the bar's thread starts
        done = list(progress(results, total=len(items), unit=unit, desc=desc))
    except BaseException as exc:  # end the workers now (taken first: shutdown forgets them)
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        if isinstance(exc, BrokenProcessPool):
            raise VicapError(f"a worker process died while {desc}: out of memory, or a script "
                             "that calls vicap outside `if __name__ == '__main__':`; run again "
                             "with --workers 1 to see where") from None
        raise
    pool.shutdown()
    return done


def _pool_context() -> BaseContext:
    """`fork` (quick) when this process runs a single thread, else `forkserver` (vicap is POSIX
    only): forking a process that runs other threads (a notebook kernel, torch) can deadlock."""
    tasks = "/proc/self/task"  # Linux lists a process's threads here
    single_thread = os.path.isdir(tasks) and len(os.listdir(tasks)) == 1
    return multiprocessing.get_context("fork" if single_thread else "forkserver")


def _worker_start(parent: int) -> None:
    """Worker start-up: Ctrl-C is the parent's to handle; the worker dies with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """End this worker as soon as `parent` ends, even by kill -9 (psutil waits on a pidfd where
    Linux has one). Not PR_SET_PDEATHSIG: a worker's parent may be the long-lived forkserver."""
    with contextlib.suppress(psutil.Error):  # the parent is already gone
        psutil.Process(parent).wait()
    os._exit(1)

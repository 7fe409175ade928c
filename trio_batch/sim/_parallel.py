"""Running a scenario's policies side by side, one worker process per policy at a time.

Each policy's run is a ``trio.run`` of its own on the same workload, and its
numbers depend only on the scenario, so policies can run in separate processes
and give the very numbers they give one after the other (a test compares the
JSON). With four policies on two cores that halves the wall time of a long run.

Design, in the order things happen:

- Each policy runs in a :class:`multiprocessing.Process` of its own, at most
  ``jobs`` at a time, started with the ``spawn`` method, never ``fork``: the
  parent may have threads (the progress bar's monitor), and forking a threaded
  process is unsafe (Python 3.12 warns about it).
- While a worker starts, the parent blocks SIGINT, so the worker is born
  with SIGINT blocked (the signal mask survives fork and exec); the worker
  ignores SIGINT, then unblocks it. Ctrl-C in a terminal signals the whole
  process group, and only the parent must react, once. The parent gets a
  Ctrl-C that came while it was blocked as soon as the worker has started.
- A worker puts ``(policy index, "progress", items done)`` on a queue every
  few hundred arrivals, then ``(index, "result", PolicyResult)``, or
  ``(index, "error", traceback)``. The parent reads the queue, reports overall
  progress, and starts the next policy when one ends.
- Whatever way the parent leaves (done, an error, Ctrl-C), it terminates the
  workers still running, so no process is left behind; a worker whose parent
  dies without that (killed) notices and exits at once. A worker that dies
  without a word (for instance because the main script lacks the
  ``if __name__ == "__main__":`` guard that the ``spawn`` method needs) is an
  error, not a hang.

Rejected: :class:`multiprocessing.pool.Pool` (it replaces a worker that dies
at start-up, for ever: an unguarded script hangs);
:class:`concurrent.futures.ProcessPoolExecutor` (it cannot stop a running
worker before Python 3.14, so Ctrl-C would wait for the run to end); threads
(the simulator is pure Python: they would share one core).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from ._results import PolicyResult
from ._run import simulate_policy
from ._scenario import Scenario, policy_label
from ._workload import Workload

__all__ = ["available_cpus", "simulate_in_processes"]

#: Seconds the parent waits for progress before looking at the results again.
_POLL: Final = 0.1


def available_cpus() -> int:
    """CPUs this process may run on."""
    counter: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)
    if counter is not None:  # Python >= 3.13
        return counter() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _worker(messages: Any, scenario: Scenario, workload: Workload, index: int) -> None:
    """In a worker process: one policy's run, reported on ``messages``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    parent = multiprocessing.parent_process()
    if parent is not None:  # if the parent dies (even by SIGKILL), stop at once
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()
    try:
        result = simulate_policy(
            scenario,
            workload,
            scenario.policies[index],
            lambda done: messages.put((index, "progress", done)),
        )
    except BaseException:
        messages.put((index, "error", traceback.format_exc()))
        raise
    messages.put((index, "result", result))


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Hold SIGINT back in the block; a process started in it is born with SIGINT blocked.

    The signal mask survives fork and exec, so a worker cannot be interrupted
    before it has ignored SIGINT; in the parent, a Ctrl-C during the block is
    delivered when it ends, not lost. The mask is the calling thread's: this
    holds as long as no other thread of the parent takes the signal (the
    command line runs no other thread; the progress bar has no monitor thread).
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def simulate_in_processes(
    scenario: Scenario,
    workload: Workload,
    jobs: int,
    on_progress: Callable[[int, int, str], None],
) -> list[PolicyResult]:
    """Simulate every policy of ``scenario`` in up to ``jobs`` worker processes.

    Returns:
        One result per policy, in the scenario's order.

    Raises:
        RuntimeError: a worker failed; the message holds its traceback or exit code.
    """
    count = len(scenario.policies)
    jobs = max(1, min(jobs, count))
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    waiting = list(range(count))
    running: dict[int, Any] = {}
    results: dict[int, PolicyResult] = {}
    done = [0] * count
    total = len(workload) * count
    try:
        while len(results) < count:
            while waiting and len(running) < jobs:
                index = waiting.pop(0)
                process = context.Process(
                    target=_worker,
                    args=(messages, scenario, workload, index),
                    name=f"trio-batch-sim {policy_label(scenario.policies[index])}",
                    daemon=True,
                )
                running[index] = process
                with _sigint_blocked():
                    process.start()
            on_progress(sum(done), total, f"{len(results)}/{count} policies, {jobs} processes")
            try:
                index, kind, value = messages.get(timeout=_POLL)
            except queue.Empty:
                _check_alive(scenario, running)
                continue
            if kind == "progress":
                done[index] = value
            elif kind == "result":
                results[index] = value
                done[index] = len(workload)
                running.pop(index).join()
            else:
                label = policy_label(scenario.policies[index])
                raise RuntimeError(f"the run of {label} failed in its worker process:\n{value}")
    finally:
        started = [process for process in running.values() if process.pid is not None]
        for process in started:
            process.terminate()
        for process in started:
            process.join()
        messages.close()
    on_progress(total, total, f"{count}/{count} policies")
    return [results[index] for index in range(count)]


def _check_alive(scenario: Scenario, running: dict[int, Any]) -> None:
    """Raise if a worker has ended without a word (its result would have come first)."""
    for index, process in running.items():
        if process.exitcode is not None and process.exitcode != 0:
            label = policy_label(scenario.policies[index])
            raise RuntimeError(
                f"the worker process for {label} ended with exit code {process.exitcode} "
                "(a script that calls run_scenario(jobs=...) needs the "
                "'if __name__ == \"__main__\":' guard)"
            )

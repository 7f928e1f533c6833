"""Where a run's CPU goes: the worker (and its busiest thread), Redis, the broker and the rest of the machine.

The throughput goal is a whole-machine question on 2 cores: the worker, Redis and the broker share them. A
profile of the worker alone cannot say whether a faster worker would be faster end to end; the CPU each
process spent per read can. Read from ``/proc`` (utime + stime of each process and of each worker thread,
and the machine's ``cpu`` line) at two moments; no sampling, nothing attached to the processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat_ticks(path: Path) -> list[int]:
    """utime, stime, cutime and cstime of a ``/proc/.../stat`` file (fields 14 to 17; the name before them may
    hold spaces): a process's own CPU, then that of the children it has waited for."""
    return [int(f) for f in path.read_text().rsplit(")", 1)[1].split()[11:15]]


def process_seconds(pid: int, children: bool = True) -> float:
    """CPU seconds a process has spent, all its threads (those that ended included), and with ``children`` the
    children it has waited for: Redis's AOF rewrites run in a forked child, a cost of Redis's durability."""
    return sum(_stat_ticks(Path(f"/proc/{pid}/stat"))[: 4 if children else 2]) / TICK


def children_seconds(pid: int) -> float:
    """CPU seconds of the children a process has waited for (those still running are not counted yet)."""
    return sum(_stat_ticks(Path(f"/proc/{pid}/stat"))[2:]) / TICK


def thread_seconds(pid: int) -> dict[int, tuple[float, float]]:
    """CPU seconds of each live thread of a process, and the seconds it waited in a run queue for a core
    (``schedstat``: runnable, not running; on 2 cores shared with Redis and the broker, time a busy thread
    loses without being idle)."""
    out: dict[int, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            waited = int((task / "schedstat").read_text().split()[1]) / 1e9
            out[int(task.name)] = (sum(_stat_ticks(task / "stat")[:2]) / TICK, waited)
        except (FileNotFoundError, ProcessLookupError):  # ended between the listing and the read
            continue
    return out


def machine_seconds(stat: str | None = None) -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far: every core's time neither idle, waiting for
    I/O, nor taken by the hypervisor; and the time the hypervisor took."""
    line = (stat if stat is not None else Path("/proc/stat").read_text()).splitlines()[0]
    name, *values = line.split()
    assert name == "cpu", line
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in values[:8])
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


@dataclass(frozen=True)
class Snapshot:
    at: float
    processes: dict[str, float]
    threads: dict[int, tuple[float, float]]  # of the process named "worker": CPU and run-queue seconds
    machine_busy: float
    machine_steal: float


def snapshot(pids: Mapping[str, int]) -> Snapshot:
    """The CPU seconds so far of each named process (one must be "worker") and of the machine."""
    busy, steal = machine_seconds()
    return Snapshot(time.monotonic(), {name: process_seconds(pid) for name, pid in pids.items()},
                    thread_seconds(pids["worker"]), busy, steal)


def usage(a: Snapshot, b: Snapshot, reads: int) -> dict[str, float]:
    """Cores each process kept busy between ``a`` and ``b`` and its CPU microseconds per read; the worker's
    busiest thread (the event loop, which holds the GIL for the batch work); the machine's busy and stolen
    cores, and the rest of it (the benchmark's own polling, the kernel's work for no process named)."""
    wall = max(b.at - a.at, 1e-9)
    out: dict[str, float] = {}
    named = 0.0
    for name, end in b.processes.items():
        spent = end - a.processes[name]
        named += spent
        out[f"e2e_cpu_{name}_cores"] = spent / wall
        out[f"e2e_cpu_{name}_us_per_read"] = spent * 1e6 / max(reads, 1)
    threads = [(b.threads[t][0] - a.threads[t][0], b.threads[t][1] - a.threads[t][1])
               for t in b.threads.keys() & a.threads.keys()]
    busiest = max(threads, default=(0.0, 0.0))
    out["e2e_cpu_worker_busiest_thread_cores"] = busiest[0] / wall
    out["e2e_cpu_worker_busiest_thread_runqueue_share"] = busiest[1] / wall
    busy = b.machine_busy - a.machine_busy
    out["e2e_cpu_machine_busy_cores"] = busy / wall
    out["e2e_cpu_machine_steal_cores"] = (b.machine_steal - a.machine_steal) / wall
    out["e2e_cpu_others_cores"] = max(busy - named, 0.0) / wall
    out["e2e_cpu_machine_us_per_read"] = busy * 1e6 / max(reads, 1)
    out["e2e_cpu_seconds"] = wall
    return out

"""benchmarks.cpu: the CPU of processes, threads and the machine from /proc, and the report's section on it."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.__main__ import cpu_anatomy
from benchmarks.cpu import TICK, children_seconds, machine_seconds, snapshot, usage

# a process with two threads: one spins for 0.5 s of CPU when told to, one sleeps; then it waits
SPINNER = """
import sys, threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
t0 = time.process_time()
while time.process_time() - t0 < 0.5:
    pass
print("spun", flush=True)
sys.stdin.readline()
"""


def test_machine_seconds_counts_busy_time_apart_from_idle_wait_and_steal() -> None:
    stat = "cpu  100 20 30 5000 70 4 6 9 0 0\ncpu0 50 10 15 2500 35 2 3 4 0 0\n"
    busy, steal = machine_seconds(stat)
    assert busy == (100 + 20 + 30 + 4 + 6) / TICK
    assert steal == 9 / TICK


def test_usage_names_the_cpu_each_process_and_the_busiest_thread_spent() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    idle = subprocess.Popen(["sleep", "60"])
    try:
        assert spinner.stdout is not None and spinner.stdin is not None
        assert spinner.stdout.readline() == "ready\n"
        pids = {"worker": spinner.pid, "redis": idle.pid}
        before = snapshot(pids)
        spinner.stdin.write("go\n")
        spinner.stdin.flush()
        assert spinner.stdout.readline() == "spun\n"
        after = snapshot(pids)
    finally:
        spinner.kill()
        idle.kill()
        spinner.wait()
        idle.wait()
    got = usage(before, after, reads=1000)
    wall = got["e2e_cpu_seconds"]
    spent = got["e2e_cpu_worker_cores"] * wall
    assert 0.5 - 2 / TICK <= spent <= 0.5 + 2 / TICK + 0.02  # what it spun, to the clock's tick
    assert abs(got["e2e_cpu_worker_us_per_read"] - spent * 1e6 / 1000) < 1e-6
    # the spinning thread is the process's busiest, the sleeping one spent nothing
    assert got["e2e_cpu_worker_busiest_thread_cores"] * wall >= spent - 2 / TICK
    assert got["e2e_cpu_redis_cores"] * wall <= 1 / TICK
    assert got["e2e_cpu_machine_busy_cores"] * wall >= spent - 2 / TICK  # the machine ran the spinner too
    assert got["e2e_cpu_others_cores"] >= 0


def test_the_cpu_section_turns_costs_per_read_into_cores_at_the_goal() -> None:
    results = {"machine": {"cores": 2}, "e2e_reads_per_s": 100_000.0,
               "e2e_cpu_worker_cores": 0.9, "e2e_cpu_worker_us_per_read": 9.0,
               "e2e_cpu_redis_cores": 0.5, "e2e_cpu_redis_us_per_read": 5.0,
               "e2e_cpu_broker_cores": 0.2, "e2e_cpu_broker_us_per_read": 2.0,
               "e2e_cpu_others_cores": 0.1, "e2e_cpu_machine_busy_cores": 1.7, "e2e_cpu_machine_us_per_read": 17.0,
               "e2e_cpu_worker_busiest_thread_cores": 0.8, "e2e_cpu_machine_steal_cores": 0.0}
    text = "\n".join(cpu_anatomy(results))
    assert "| worker (all threads) | 0.90 | 9.00 | 1.35 |" in text
    assert "| Redis (and its AOF rewrites) | 0.50 | 5.00 | 0.75 |" in text
    assert "| the machine | 1.70 | 17.00 | 2.55 |" in text
    assert "150,000 reads/s needs 2.55 cores of the machine's 2" in text
    assert cpu_anatomy({"e2e_reads_per_s": 1.0}) == []  # a report from before the meter: no section


def test_a_process_counts_the_cpu_of_the_children_it_waited_for() -> None:
    # Redis's AOF rewrite is a forked child: its CPU belongs to Redis, not to "the rest"
    parent = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdin is not None
        assert parent.stdout.readline() == "ready\n"
        before, reaped_before = snapshot({"worker": parent.pid}), children_seconds(parent.pid)
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == "reaped\n"
        after, reaped_after = snapshot({"worker": parent.pid}), children_seconds(parent.pid)
    finally:
        parent.kill()
        parent.wait()
    got = usage(before, after, reads=1)
    spent = got["e2e_cpu_worker_cores"] * got["e2e_cpu_seconds"]
    assert spent >= 0.3 - 2 / TICK  # the child's spin
    assert 0.3 - 2 / TICK <= reaped_after - reaped_before <= spent  # all of it the child's
    assert got["e2e_cpu_worker_busiest_thread_cores"] * got["e2e_cpu_seconds"] < 0.1  # the parent only waited


FORKER = """
import os, sys, time
print("ready", flush=True)
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    t0 = time.process_time()
    while time.process_time() - t0 < 0.3:
        pass
    os._exit(0)
os.waitpid(pid, 0)
print("reaped", flush=True)
sys.stdin.readline()
"""

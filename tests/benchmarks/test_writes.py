"""The write-path comparison's report: each mode judged against the script. (That a transaction stores what
the script stores, and is fenced the same way, is tested with ``store.apply_batches`` in tests/test_store.py.)"""

from __future__ import annotations

from benchmarks.writes import report


def test_each_mode_is_judged_against_the_script() -> None:
    def run(cpu: float, cmd: float, transcoding: float = 0.0, children: float = 0.0) -> dict[str, float]:
        return {"server_cpu_s": cpu, "server_children_cpu_s": children, "batch_command_s": cmd, "client_packing_s": 0.1,
                "writer_transcoding_s": transcoding, "wall_s": 1.0}

    r = {"date": "d", "command": "c", "seconds": 1.0, "machine": {}, "messages": 1_000_000, "batches": 50,
         "commands": 10, "arguments": 20,
         "runs": {"script": [run(3.0, 2.0), run(5.0, 2.2)],
                  "multi": [run(2.0, 1.0, 0.2, 0.3), run(3.0, 1.4, 0.4, 0.5)]}}
    lines = report(r)
    assert "| script | 4.00 | 1.00 | 0.00 | 2.10 | 1.00 | 0.10 | 0.00 | 3.00 / 5.00 |" in lines
    assert "| multi | 2.50 | 0.62 | 0.40 | 1.20 | 0.57 | 0.10 | 0.30 | 2.00 / 3.00 |" in lines

"""Where the CPU and memory go: this process and each child server's process group (/proc)."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from bench.e2e.results import PhaseCpu
from bench.local.process import proc_status_kib


class CpuMeter:
    """CPU seconds of this process and of each child server's process group (Linux /proc).

    This process runs the consumer under test (its decode threads included) and the harness;
    the broker and tritonserver, with Triton's backend stubs, run in process groups of their
    own; ``other_processes`` is the rest of the machine's busy time. Elsewhere than Linux only
    this process is measured.
    """

    def __init__(self, groups: Mapping[str, int]) -> None:
        self._groups = dict(groups)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def sample(self) -> dict[str, float]:
        times = os.times()
        sample = {"consumer_and_harness": times.user + times.system}
        for name, leader in self._groups.items():
            sample[name] = self._group_seconds(leader)
        machine = self._machine_seconds()
        if machine is not None:
            # Whatever else runs on the machine competes for the same cores.
            sample["other_processes"] = machine - sum(sample.values())
        return sample

    def _machine_seconds(self) -> float | None:
        """Busy CPU seconds of the whole machine since boot, from /proc/stat."""
        try:
            first = Path("/proc/stat").read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return None
        # user nice system idle iowait irq softirq steal ...: everything but idle and iowait.
        ticks = [int(v) for v in first[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / self._tick

    @contextlib.contextmanager
    def phase(self, name: str, into: dict[str, PhaseCpu]) -> Iterator[None]:
        before, began = self.sample(), time.monotonic()
        yield
        after, wall = self.sample(), time.monotonic() - began
        used = {k: round(after[k] - before[k], 3) for k in after}
        if "other_processes" in used:
            # Per-process and machine-wide counters tick separately: a few ticks either way.
            used["other_processes"] = max(0.0, used["other_processes"])
        into[name] = PhaseCpu(
            wall_s=round(wall, 3),
            cpu_s=used,
            cores_busy={k: round(v / wall, 2) if wall > 0 else 0.0 for k, v in used.items()},
        )

    def _group_seconds(self, leader: int) -> float:
        ticks = 0
        for pid in _group_pids(leader):
            fields = _stat_fields(pid)
            if fields is not None:
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / self._tick


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _group_pids(leader: int) -> list[int]:
    """Processes in the process group led by ``leader`` (servers start in sessions of their own)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    pids = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and len(fields) > 12 and int(fields[2]) == leader:
                pids.append(int(entry.name))
    return pids


def memory_use(groups: Mapping[str, int]) -> dict[str, float | None]:
    """Memory of the processes involved, in MB, read just before the servers stop."""

    def mb(kib: int | None) -> float | None:
        return round(kib / 1024, 1) if kib is not None else None

    broker = groups["broker"]
    triton = [proc_status_kib(pid, "VmRSS") for pid in _group_pids(groups["triton"])]
    # ru_maxrss is in KiB on Linux.
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "consumer_and_harness_peak_rss_mb": mb(own_peak),
        "broker_peak_rss_mb": mb(proc_status_kib(broker, "VmHWM")),
        "broker_rss_mb": mb(proc_status_kib(broker, "VmRSS")),
        "triton_rss_mb": mb(sum(k for k in triton if k is not None)) if triton else None,
    }

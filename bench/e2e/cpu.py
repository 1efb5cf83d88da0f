"""Where the CPU and memory go: this process and each child's process group (Linux /proc).

``CpuMeter`` reads cumulative CPU seconds; ``Sampler`` records them on a thread with wall-clock
times, so the CPU of any interval (e.g. between the first and the last decision of a run) can
be read afterwards, by linear interpolation between samples.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import resource
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from bench.e2e.results import PhaseCpu
from bench.local.process import proc_status_kib

HARNESS: Final = "harness"
OTHER: Final = "other_processes"
# Group members are re-listed this often (one pass over /proc, a few ms): worker processes
# may start after their leader.
_RELIST_S: Final = 1.0


class CpuMeter:
    """CPU seconds of this process (``harness``) and of each child's process group.

    Every child this benchmark starts (broker, tritonserver with its backend stubs, the
    consumer under test with its worker processes) leads a process group of its own;
    ``other_processes`` is the rest of the machine's busy time (steal included). A member
    that exits keeps the CPU it was last seen with, so a group's total never goes down.
    Elsewhere than Linux only this process is measured.
    """

    def __init__(self, groups: Mapping[str, int]) -> None:
        self._groups = dict(groups)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._members: dict[str, list[int]] = {}
        self._seen: dict[str, dict[int, int]] = {name: {} for name in self._groups}
        self._listed_at = -_RELIST_S
        self._lock = threading.Lock()

    @property
    def groups(self) -> dict[str, int]:
        return dict(self._groups)

    def with_group(self, name: str, leader: int) -> CpuMeter:
        """A meter that also measures the process group led by ``leader``, as ``name``."""
        return CpuMeter({**self._groups, name: leader})

    def sample(self) -> dict[str, float]:
        times = os.times()
        sample = {HARNESS: times.user + times.system}
        with self._lock:
            now = time.monotonic()
            if now - self._listed_at >= _RELIST_S:
                members = _groups_members(set(self._groups.values()))
                self._members = {name: members.get(pid, []) for name, pid in self._groups.items()}
                self._listed_at = now
            for name, pids in self._members.items():
                seen = self._seen[name]
                for pid in pids:
                    ticks = _cpu_ticks(pid)
                    if ticks is not None:
                        seen[pid] = ticks
                sample[name] = sum(seen.values()) / self._tick
        machine = self._machine_seconds()
        if machine is not None:
            # Whatever else runs on the machine competes for the same cores.
            sample[OTHER] = machine - sum(sample.values())
        return sample

    def rss_kib(self, name: str) -> int:
        """Resident memory of the group ``name`` now, summed over its members."""
        with self._lock:
            pids = self._members.get(name) or group_pids(self._groups[name])
        return sum(kib for pid in pids if (kib := proc_status_kib(pid, "VmRSS")) is not None)

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
        into[name] = phase_cpu(before, self.sample(), time.monotonic() - began)


def phase_cpu(before: Mapping[str, float], after: Mapping[str, float], wall: float) -> PhaseCpu:
    """CPU seconds and cores busy by process group between two samples ``wall`` seconds apart."""
    used = {k: round(after[k] - before.get(k, 0.0), 3) for k in after}
    if OTHER in used:
        # Per-process and machine-wide counters tick separately: a few ticks either way.
        used[OTHER] = max(0.0, used[OTHER])
    return PhaseCpu(
        wall_s=round(wall, 3),
        cpu_s=used,
        cores_busy={k: round(v / wall, 2) if wall > 0 else 0.0 for k, v in used.items()},
    )


@dataclass(frozen=True)
class Sample:
    wall: float
    """``time.time()``, comparable with the timestamps in decisions and Kafka records."""
    cpu: dict[str, float]
    rss_kib: int | None


class Sampler:
    """Samples a ``CpuMeter`` on a thread every ``interval_s`` until the ``with`` block ends.

    ``rss_group`` names a group whose resident memory is recorded too, summed over its members,
    with its leader's own peak (VmHWM, read while it still runs).
    """

    def __init__(self, meter: CpuMeter, interval_s: float, rss_group: str | None = None) -> None:
        self._meter = meter
        self._interval_s = interval_s
        self._rss_group = rss_group
        self._leader = meter.groups[rss_group] if rss_group else None
        self._leader_hwm_kib: int | None = None
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu-sampler", daemon=True)

    def __enter__(self) -> Self:
        self._take()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._take()

    def _take(self) -> None:
        rss = self._meter.rss_kib(self._rss_group) if self._rss_group else None
        if self._leader is not None:
            hwm = proc_status_kib(self._leader, "VmHWM")
            if hwm is not None:
                self._leader_hwm_kib = max(hwm, self._leader_hwm_kib or 0)
        self.samples.append(Sample(time.time(), self._meter.sample(), rss))

    def peak_group_rss_kib(self) -> int | None:
        """The largest sampled sum of the group's resident memory."""
        values = [s.rss_kib for s in self.samples if s.rss_kib]
        return max(values) if values else None

    def leader_peak_rss_kib(self) -> int | None:
        """The group leader's own peak resident memory, as last read while it ran."""
        return self._leader_hwm_kib

    def whole(self) -> PhaseCpu:
        """The CPU of everything sampled, first sample to last."""
        first, last = self.samples[0], self.samples[-1]
        return phase_cpu(first.cpu, last.cpu, last.wall - first.wall)

    def between(self, start: float, end: float) -> PhaseCpu:
        """The CPU between two wall-clock times (see :func:`cpu_between`)."""
        return cpu_between(self.samples, start, end)


def cpu_between(samples: Sequence[Sample], start: float, end: float) -> PhaseCpu:
    """The CPU between two wall-clock times, interpolated linearly between the samples around
    each (clamped to the first and last sample)."""
    return phase_cpu(_cpu_at(samples, start), _cpu_at(samples, end), end - start)


def _cpu_at(samples: Sequence[Sample], wall: float) -> dict[str, float]:
    index = bisect.bisect_left([s.wall for s in samples], wall)
    if index == 0:
        return dict(samples[0].cpu)
    if index >= len(samples):
        return dict(samples[-1].cpu)
    before, after = samples[index - 1], samples[index]
    share = (wall - before.wall) / (after.wall - before.wall) if after.wall > before.wall else 0
    return {
        k: before.cpu.get(k, 0.0) + share * (v - before.cpu.get(k, 0.0))
        for k, v in after.cpu.items()
    }


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _cpu_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    if fields is None or len(fields) <= 12:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime


def group_pids(leader: int) -> list[int]:
    """Processes in the process group led by ``leader`` (children start sessions of their own)."""
    return _groups_members({leader}).get(leader, [])


def _groups_members(leaders: set[int]) -> dict[int, list[int]]:
    """The processes of each of the process groups led by ``leaders``, in one pass over /proc."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    members: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and len(fields) > 12 and int(fields[2]) in leaders:
                members.setdefault(int(fields[2]), []).append(int(entry.name))
    return members


def mb(kib: int | None) -> float | None:
    return round(kib / 1024, 1) if kib is not None else None


def memory_use(groups: Mapping[str, int]) -> dict[str, float | None]:
    """Memory of the harness and the servers, in MB, read just before the servers stop."""
    broker = groups["broker"]
    triton = [proc_status_kib(pid, "VmRSS") for pid in group_pids(groups["triton"])]
    # ru_maxrss is in KiB on Linux.
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "harness_peak_rss_mb": mb(own_peak),
        "broker_peak_rss_mb": mb(proc_status_kib(broker, "VmHWM")),
        "broker_rss_mb": mb(proc_status_kib(broker, "VmRSS")),
        "triton_rss_mb": mb(sum(k for k in triton if k is not None)) if triton else None,
    }

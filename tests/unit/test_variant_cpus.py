"""Which CPUs a varied build with fewer CPUs runs on: the least busy ones, so that two varied
builds at once do not share one CPU while another idles."""

from __future__ import annotations

from collections.abc import Iterator

from mlos_repro.sandbox.variant import cpu_busy_times, least_busy

HEADER = "cpu  100 0 100 1000 0 0 0 0 0 0\n"


def stat(*busy: int) -> str:
    """/proc/stat with per-CPU user ticks `busy` and the same idle and iowait ticks."""
    return HEADER + "".join(f"cpu{i} {b} 0 0 500 7 0 0 0 0 0\n" for i, b in enumerate(busy)) + "intr 1 2 3\n"


def reader(*texts: str) -> Iterator[str]:
    return iter(texts)


def test_busy_ticks_leave_out_idle_and_iowait() -> None:
    assert cpu_busy_times(stat(10, 20)) == {0: 10, 1: 20}


def test_the_cpu_that_worked_least_is_chosen() -> None:
    samples = reader(stat(0, 0, 0), stat(90, 5, 50))  # CPU 0 ran a build meanwhile
    assert least_busy([0, 1, 2], 1, sample=0, read=lambda: next(samples)) == [1]
    samples = reader(stat(0, 0, 0), stat(90, 5, 50))
    assert least_busy([0, 1, 2], 2, sample=0, read=lambda: next(samples)) == [1, 2]


def test_a_tie_takes_the_lowest_number_and_only_allowed_cpus_count() -> None:
    samples = reader(stat(0, 0, 0, 0), stat(5, 5, 0, 0))
    assert least_busy([0, 1, 3], 1, sample=0, read=lambda: next(samples)) == [3]
    samples = reader(stat(0, 0), stat(5, 5))
    assert least_busy([0, 1], 1, sample=0, read=lambda: next(samples)) == [0]


def test_an_unreadable_stat_falls_back_to_the_first_cpus() -> None:
    def unreadable() -> str:
        raise OSError("no /proc")
    assert least_busy([2, 3], 1, sample=0, read=unreadable) == [2]

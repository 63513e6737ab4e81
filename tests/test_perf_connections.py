"""The descriptor count behind the SMTP reserve is skipped only far from the reserve."""

from __future__ import annotations

from mtaserver.smtp.connections import InboundConnections, fd_reserve


def counted(used: list[int], limit: int) -> tuple[InboundConnections, list[int]]:
    calls: list[int] = []

    def count() -> int:
        calls.append(used[0])
        return used[0]

    return InboundConnections(count_descriptors=count, descriptor_limit=lambda: limit), calls


def test_near_the_reserve_every_admission_counts() -> None:
    """With fewer than 16 spare descriptors, each admission lists the descriptors again."""
    used = [1000 - fd_reserve(1000) - 10]
    connections, calls = counted(used, 1000)
    for n in range(5):
        assert connections.admit(f"192.0.2.{n}", 100, 100) is None
    assert len(calls) == 5
    used[0] += 11
    assert connections.admit("192.0.2.99", 100, 100) is not None


def test_far_from_the_reserve_the_count_is_skipped_a_bounded_number_of_times() -> None:
    """With S spare, min(64, S // 16) admissions go uncounted, then the count runs again."""
    used = [100]
    connections, calls = counted(used, 1 << 20)
    for n in range(65):
        assert connections.admit(f"192.0.2.{n % 200}", 1000, 1000) is None
    assert len(calls) == 1
    used[0] = (1 << 20) - 1  # descriptors ran out meanwhile: the next count sees it
    assert connections.admit("192.0.2.250", 1000, 1000) is not None
    assert len(calls) == 2


def test_skips_never_outnumber_the_spare() -> None:
    """A spare of 160 beyond the reserve allows 10 uncounted admissions, not more."""
    limit = 1000
    used = [limit - fd_reserve(limit) - 160]
    connections, calls = counted(used, limit)
    for n in range(11):
        assert connections.admit(f"192.0.2.{n}", 100, 100) is None
    assert len(calls) == 1
    assert connections.admit("192.0.2.50", 100, 100) is None
    assert len(calls) == 2

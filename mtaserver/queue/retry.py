"""Retry schedules and expiry, as pure functions of attempts and time.

PowerMTA's `retry-after 10m,20m,1h` means: wait 10 minutes after the first failed
attempt, 20 after the second, and an hour after every later one (the last interval
repeats). `bounce-after` expires a recipient that has been queued that long.
"""

from __future__ import annotations


def retry_delay(failed_attempts: int, retry_after: tuple[float, ...]) -> float:
    """Seconds to wait after the `failed_attempts`-th failure (1-based); last one repeats."""
    if not retry_after:
        return 600.0
    index = max(failed_attempts, 1) - 1
    return retry_after[min(index, len(retry_after) - 1)]


def next_attempt_at(
    now: float,
    failed_attempts: int,
    retry_after: tuple[float, ...],
    time_queued: float,
    bounce_after: float,
) -> float:
    """When to try again; never later than the expiry, so expiry is noticed on time."""
    return min(now + retry_delay(failed_attempts, retry_after), time_queued + bounce_after)


def is_expired(time_queued: float, now: float, bounce_after: float) -> bool:
    """A recipient queued for `bounce_after` seconds or more is bounced (4.4.7)."""
    return now - time_queued >= bounce_after

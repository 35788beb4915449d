"""Deadlines on the server's monotonic clock."""

from __future__ import annotations

from typing import Optional

from inferential.scheduler.request import InferenceRequest


def derive_deadline_ns(
    arrival_ns: int,
    *,
    latency_budget_ms: Optional[float] = None,
    deadline_wall_ns: int = 0,
    wall_now_ns: Optional[int] = None,
    actions_remaining: Optional[int] = None,
    control_rate_hz: float = 0.0,
) -> Optional[int]:
    """The absolute deadline (monotonic ns) of an observation that arrived at ``arrival_ns``.

    - ``deadline_wall_ns`` (the wire's ``deadline_ns``, Unix epoch; 0 = none) is
      moved onto the monotonic clock with ``wall_now_ns``, the server's wall clock
      read at arrival: ``arrival_ns + (deadline_wall_ns - wall_now_ns)``.
    - ``actions_remaining`` at ``control_rate_hz`` gives the time the robot's
      action queue runs dry: ``arrival_ns + actions_remaining / control_rate_hz``.
      A robot already dry (0 left) is given one control period rather than a
      deadline in the past, so it is served first without being written off as
      unmeetable by admission control.
    - With both, the earlier one wins. With neither, ``latency_budget_ms`` after
      arrival; None when nothing gives a deadline.
    """
    candidates: list[int] = []
    if deadline_wall_ns and wall_now_ns is not None:
        candidates.append(arrival_ns + (int(deadline_wall_ns) - int(wall_now_ns)))
    if actions_remaining is not None and control_rate_hz and control_rate_hz > 0:
        candidates.append(arrival_ns + int(max(actions_remaining, 1) / control_rate_hz * 1e9))
    if candidates:
        return min(candidates)
    if latency_budget_ms is not None and latency_budget_ms > 0:
        return arrival_ns + int(latency_budget_ms * 1e6)
    return None


def effective_deadline_ns(request: InferenceRequest) -> int:
    """The deadline used for ordering: ``deadline_ns``; else when the robot's next
    observation is due (arrival + its cadence interval); else arrival + its budget."""
    if request.deadline_ns is not None:
        return request.deadline_ns
    if request.expected_interval_ms:
        return request.arrival_ns + int(request.expected_interval_ms * 1e6)
    return request.arrival_ns + int(request.latency_budget_ms * 1e6)

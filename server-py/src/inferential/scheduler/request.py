"""The scheduler's stable view of one queued observation."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Optional

_seq = itertools.count(1)


@dataclass(eq=False)
class InferenceRequest:
    """One observation waiting for (or going through) inference.

    Times ending in ``_ns`` without "wall" are on the server's monotonic clock
    (the scheduler's injected clock); ``observation_timestamp_ns`` is the robot's
    wall clock. The ``age_ms``/``slack_ms``/``cadence_lateness`` fields are live:
    schedulers refresh them (``refresh(now_ns)``) before scoring, so a scoring
    policy always sees current values.
    """

    client_id: str
    model_id: str
    # The model's inputs: numpy views over the received frames, plus metadata strings.
    inputs: dict[str, Any] = field(default_factory=dict)
    request_id: int = 0
    client_type: str = ""
    urgency: float = 0.0
    priority: int = 1
    steps_remaining: Optional[int] = None
    arrival_ns: int = 0
    # Absolute deadline on the monotonic clock (from the robot's deadline, its
    # budget, or the configured budget); None when nothing gives one.
    deadline_ns: Optional[int] = None
    latency_budget_ms: float = 50.0
    # False when the robot stated no time limit at all (no budget, deadline or runway, none
    # configured for it: a 1.x client): its deadline is then the server's guess, the default
    # budget, which the scheduler tightens to the robot's cadence once it is seen sending on
    # its own clock (QueuedScheduler: a reply after its next observation is stale).
    budget_stated: bool = True
    observation_timestamp_ns: int = 0
    actions_remaining: Optional[int] = None
    control_rate_hz: float = 0.0
    # Cadence, measured when the request arrived: the robot's EMA interval for
    # this model *before* this arrival, and the gap since its previous arrival.
    expected_interval_ms: Optional[float] = None
    since_previous_ms: Optional[float] = None
    retries: int = 0
    # Set by the server: routing identity, protocol version of the sender, payload bytes.
    identity: bytes = b""
    protocol_version: int = 0
    payload_bytes: int = 0
    # Unique within the process; ties in scores break on it (older first).
    seq: int = field(default_factory=lambda: next(_seq))
    # Live fields, refreshed by the scheduler.
    age_ms: float = 0.0
    slack_ms: Optional[float] = None
    cadence_lateness: float = 0.0
    # Set when admission control lets an unmeetable request run at lowest priority.
    deprioritized: bool = False
    # Set by the server when the request's whole allowance (deadline - arrival) is shorter
    # than the model's run time alone: late even on an idle server, a mismatch of
    # configuration rather than load, so its result is sent even after the deadline.
    late_ok: bool = False
    # Set by the server once the request is settled (answered, or dropped for a peer that
    # is gone): a newer observation arriving before that shows its robot sends on its own clock.
    settled: bool = False
    # Set by the server's engine while the request's batch runs (the server's TTL
    # then waits for the batch instead of answering EXPIRED).
    running: bool = False
    # The (robot, model) labels of the request's metrics, made once at admission
    # (None for a request built outside the server; the ledger makes them then).
    labels: Optional[dict[str, str]] = None
    # Set by a scheduler that sheds it QUEUE_FULL or DEADLINE_UNMEETABLE: when a fresh
    # observation has a chance (ms; 0 = no hint). Sent as the reply's retry_after_ms.
    retry_after_ms: int = 0
    # Action chunks (server/chunking.py): the robot's control step at the observation
    # (None when not sent), the delay predicted at dispatch (arrival -> reply handed to the
    # socket, ms; None until dispatched), and when the reply's actions expire (Unix ns, 0 = never).
    control_step: Optional[int] = None
    predicted_delay_ms: Optional[float] = None
    valid_until_ns: int = 0

    def refresh(self, now_ns: int) -> None:
        """Recompute the live fields for ``now_ns``."""
        self.age_ms = max(0.0, (now_ns - self.arrival_ns) / 1e6)
        self.slack_ms = None if self.deadline_ns is None else (self.deadline_ns - now_ns) / 1e6
        self.cadence_lateness = cadence_lateness(self.expected_interval_ms, self.since_previous_ms, self.age_ms)

    @property
    def chunked(self) -> bool:
        """An action-chunk request (it sent its control rate): a chunk that comes after its
        deadline still ends the robot's hold, so it is never withheld or rejected for lateness."""
        return self.control_rate_hz > 0

    @property
    def key(self) -> tuple[str, str]:
        """The robot and model this request belongs to (cadence is tracked per key)."""
        return (self.client_id, self.model_id)

    @property
    def stream(self) -> tuple[str, bytes, str]:
        """The reply stream this request belongs to: robot, connection (routing
        identity; empty outside the server) and model. Coalescing keys on it, so a
        newer observation only supersedes one whose reply goes to the same connection."""
        return (self.client_id, self.identity, self.model_id)


def cadence_lateness(expected_interval_ms: Optional[float], since_previous_ms: Optional[float], age_ms: float) -> float:
    """How far past its usual cadence this robot is, in units of its interval, in [0, 1].

    At arrival a robot that shows up exactly on cadence is at 0; one that arrived
    late by half an interval starts at 0.5. Waiting in the queue adds to it, and
    at one full interval past the expected time the robot's next control tick is
    due without an answer: the factor saturates at 1.
    """
    if not expected_interval_ms or since_previous_ms is None or expected_interval_ms <= 0:
        return 0.0
    late = (since_previous_ms + age_ms) / expected_interval_ms - 1.0
    return min(1.0, max(0.0, late))

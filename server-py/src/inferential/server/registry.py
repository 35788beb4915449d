"""Who is connected: robots, their cadence per model, and when they went quiet."""

from __future__ import annotations

import hmac
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

from inferential.config.schema import AuthConfig, ClientsConfig


@dataclass
class Cadence:
    """EMA of the interval between a robot's observations for one model."""

    alpha: float
    last_arrival_ns: Optional[int] = None
    ema_interval_ms: Optional[float] = None

    def observe(self, now_ns: int) -> tuple[Optional[float], Optional[float]]:
        """Record an arrival; return (EMA interval before it, gap since the previous one).

        The EMA is read *before* it absorbs this arrival, so a late observation
        is measured against the robot's usual rhythm, not against itself.
        """
        before = self.ema_interval_ms
        if self.last_arrival_ns is not None and now_ns <= self.last_arrival_ns:
            # Dated no later than the last (arrivals are estimated, and a refused one may be
            # counted after a newer one): no gap to learn from.
            return before, None
        gap = None if self.last_arrival_ns is None else (now_ns - self.last_arrival_ns) / 1e6
        if gap is not None:
            self.ema_interval_ms = gap if before is None else self.alpha * gap + (1 - self.alpha) * before
        self.last_arrival_ns = now_ns
        return before, gap


@dataclass
class Robot:
    client_id: str
    client_type: str
    first_seen_ns: int
    last_seen_ns: int
    identities: set[bytes] = field(default_factory=set)
    # Per (model, connection): another connection claiming this client id has a rhythm
    # of its own and must not disturb this one's (the scheduler scores on it).
    cadences: dict[tuple[str, bytes], Cadence] = field(default_factory=dict)
    requests: int = 0
    last_status: str = ""


class BufferWait:
    """How long one connection's observations waited before the server read them.

    ``server wall clock - robot timestamp`` is the robot's clock offset plus the
    time in transit and in socket buffers (and, when a robot stamps with its sensor
    read time, the sensor's age). Its minimum over a recent window is the offset plus
    the quickest transit; what exceeds it is *claimed* waiting. The claim is never
    believed beyond the measured bound the transport gives (``bound_ns``: how long any
    message read now can have been queued for the server), so a robot's clock step,
    an old sensor time or a forged timestamp cannot make the server reject on its own.
    When the claim exceeds the bound, the baseline was wrong (the clock stepped back):
    it is raised to the least value consistent with the bound. The window (two halves
    of ``WINDOW_NS``) lets the baseline follow steps the other way.
    """

    WINDOW_NS = 10_000_000_000

    __slots__ = ("current", "previous", "started")

    def __init__(self) -> None:
        self.current: Optional[int] = None
        self.previous: Optional[int] = None
        self.started = 0

    def waited_ns(self, wall_ns: int, timestamp_ns: int, bound_ns: Optional[int] = None) -> int:
        delta = wall_ns - timestamp_ns
        if self.current is None or wall_ns - self.started > self.WINDOW_NS:
            self.previous, self.current, self.started = self.current, delta, wall_ns
        elif delta < self.current:
            self.current = delta
        base = self.current if self.previous is None else min(self.current, self.previous)
        waited = max(0, delta - base)
        if bound_ns is not None and waited > bound_ns:
            floor = delta - bound_ns  # the baseline is at least this, or the message waited longer than it can have
            self.current = max(self.current, floor)
            if self.previous is not None:
                self.previous = max(self.previous, floor)
            waited = bound_ns
        return waited


class ClientRegistry:
    """Robots by client_id. A robot is registered by its first observation and
    unregistered after ``disconnect_timeout_s`` of silence or when its replies
    become undeliverable."""

    def __init__(
        self, clients: ClientsConfig, auth: AuthConfig, cadence_alpha: float, disconnect_timeout_s: float
    ) -> None:
        self.clients = clients
        self.auth = auth
        self.alpha = cadence_alpha
        self.timeout_ns = int(disconnect_timeout_s * 1e9)
        # Least recently heard first: past clients.max_tracked the first one is forgotten.
        self.robots: OrderedDict[str, Robot] = OrderedDict()
        #: robots forgotten to stay within clients.max_tracked
        self.evicted = 0
        # Per connection (routing identity), not per client.id: an id is only a claim, and
        # another connection using it must not move this one's baseline. Bounded: the
        # least recently used entries go first (a forgotten one re-learns from one message).
        self._waits: OrderedDict[bytes, BufferWait] = OrderedDict()

    def reconfigure(self, clients: ClientsConfig, auth: AuthConfig) -> None:
        self.clients = clients
        self.auth = auth

    def check_access(self, client_id: str, token: str) -> Optional[str]:
        """None if this robot may send, else why not."""
        known = self.clients.get(client_id)
        if known is None and not self.clients.accept_unknown:
            return f"client '{client_id}' is not in clients.known and accept_unknown is false"
        expected = known.auth_token if known is not None and known.auth_token is not None else self.auth.token
        if expected is not None and not hmac.compare_digest(expected.encode(), token.encode()):
            return "missing or wrong auth_token" if token else "this server requires an auth_token"
        return None

    def on_observation(
        self, client_id: str, client_type: str, model_id: str, identity: bytes, now_ns: int
    ) -> tuple[Robot, bool, Optional[float], Optional[float]]:
        """(robot, is_new, EMA interval before this arrival, gap since the previous one)."""
        robots = self.robots
        robot = robots.get(client_id)
        is_new = robot is None
        if robot is None:
            if len(robots) >= self.clients.max_tracked:
                # Ids are self-declared: without a bound, invented ones grow the server. The
                # robot heard from longest ago goes; its queued requests are still answered.
                self.unregister(next(iter(robots)))
                self.evicted += 1
            robot = Robot(client_id, client_type, now_ns, now_ns)
            robots[client_id] = robot
        else:
            robots.move_to_end(client_id)
        robot.last_seen_ns = now_ns
        robot.identities.add(identity)
        robot.requests += 1
        key = (model_id, identity)
        cadence = robot.cadences.get(key)
        if cadence is None:
            if len(robot.cadences) >= self.MAX_CADENCES:  # connections come and go under one id: keep the recent
                del robot.cadences[min(robot.cadences, key=lambda k: robot.cadences[k].last_arrival_ns or 0)]
            cadence = robot.cadences[key] = Cadence(self.alpha)
        expected, gap = cadence.observe(now_ns)
        return robot, is_new, expected, gap

    def observe_refused(self, arrivals: list[tuple[str, bytes, str, int]]) -> None:
        """Count in their streams' cadences the observations the native transport refused
        itself (``(robot id, identity, model, when read)``, oldest first), as the loop counts
        those it admits: a robot that states no budget has its deadline tightened to its
        cadence, and under overload most of its observations never reach the loop, so
        without them its rhythm would look two or three times slower than it is. Only
        streams already known are counted (and, as always, only arrivals after the last)."""
        robots = self.robots
        for client_id, identity, model_id, at_ns in arrivals:
            robot = robots.get(client_id)
            cadence = robot.cadences.get((model_id, identity)) if robot is not None else None
            if robot is None or cadence is None:
                continue
            cadence.observe(at_ns)
            if at_ns > robot.last_seen_ns:
                robot.last_seen_ns = at_ns

    def priority_for(self, client_id: str, sent: int, max_priority: int) -> int:
        """The priority a request runs at: the configured one when pinned, else the robot's."""
        known = self.clients.get(client_id)
        if known is not None and known.priority is not None and known.pin_priority:
            return min(known.priority, max_priority)
        return min(sent, max_priority)

    def budget_for(self, client_id: str, sent_ms: float) -> float:
        if sent_ms > 0:
            return sent_ms
        known = self.clients.get(client_id)
        if known is not None and known.latency_budget_ms is not None:
            return known.latency_budget_ms
        return self.clients.defaults.latency_budget_ms

    def silent(self, now_ns: int) -> list[str]:
        return [cid for cid, r in self.robots.items() if now_ns - r.last_seen_ns > self.timeout_ns]

    #: (model, connection) cadences kept per robot
    MAX_CADENCES = 64
    #: connections whose buffer-wait baseline is kept
    MAX_WAITS = 16384

    def buffer_wait_ns(self, identity: bytes, wall_ns: int, timestamp_ns: int, bound_ns: Optional[int] = None) -> int:
        """Time this observation waited before being read (0 without a timestamp),
        never more than ``bound_ns`` when the caller measured one."""
        if not timestamp_ns:
            return 0
        waits = self._waits
        wait = waits.get(identity)
        if wait is None:
            wait = waits[identity] = BufferWait()
            if len(waits) > self.MAX_WAITS:
                waits.popitem(last=False)
        else:
            waits.move_to_end(identity)
        return wait.waited_ns(wall_ns, timestamp_ns, bound_ns)

    def forget_connection(self, identity: bytes) -> None:
        self._waits.pop(identity, None)

    def unregister(self, client_id: str) -> Optional[Robot]:
        robot = self.robots.pop(client_id, None)
        if robot is not None:
            for identity in robot.identities:
                self._waits.pop(identity, None)
        return robot

    def by_identity(self, identity: bytes) -> list[str]:
        return [cid for cid, r in self.robots.items() if identity in r.identities]

"""The reply matcher: request ids, the outstanding-request table and per-model delivery.

A pure state machine over (sends, replies, clock): it never touches a socket, and the
clock is injected, so matching cases run without sockets or sleeping.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from inferential._envelope import build_result, check_reply_envelope, parse_reply
from inferential._proto import inferential_pb2 as pb
from inferential.errors import ProtocolError, WireError
from inferential.result import Result
from inferential.wire import Limits

log = logging.getLogger("inferential.client")


@dataclass
class ConnectionStats:
    """Counters of one connection (docs/protocol.md, "Matching replies").

    sent: observations handed to the socket. send_failed: observe() calls that
    raised ServerUnavailable. received: reply messages read from the socket.
    stale_dropped: replies dropped because a newer reply for the same model was
    delivered first, or superseded an unread one, or their request() gave up.
    unknown_dropped: replies to no outstanding request of this connection
    (unknown or duplicate request id, or a model_id that does not match).
    malformed_dropped: replies that break the protocol, including a version-2 reply
    with request id 0 (the server could not read an observation). by_status: replies
    matched to a request, by status name. socket_resets: times the socket was
    recreated because libzmq had dropped the connection for good (a protocol error,
    e.g. a reply over max_message_bytes).
    """

    sent: int = 0
    send_failed: int = 0
    received: int = 0
    stale_dropped: int = 0
    unknown_dropped: int = 0
    malformed_dropped: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    socket_resets: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_LATEST, _AWAITED, _ABANDONED = 0, 1, 2


class _Outstanding:
    __slots__ = ("model_id", "sent_ns", "mode")

    def __init__(self, model_id: str, sent_ns: int, mode: int) -> None:
        self.model_id = model_id
        self.sent_ns = sent_ns
        self.mode = mode


# Where a reply went: (model_id, request_id, for a request() waiter).
Delivery = tuple[str, int, bool]
_NOTHING: tuple[Delivery, ...] = ()


class ReplyMatcher:
    """Matches replies to the requests of one connection and keeps them for their readers.

    Not thread-safe: a connection uses it from one thread (or one event loop).
    ``clock`` returns nanoseconds (monotonic); it times each round trip.
    """

    # Outstanding requests kept; older ones are forgotten (their late replies count as unknown).
    MAX_OUTSTANDING = 4096

    def __init__(self, limits: Limits, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.stats = ConnectionStats()
        self._limits = limits
        self._clock = clock
        self._next_id = 1
        self._outstanding: dict[int, _Outstanding] = {}  # insertion order == request id order
        self._newest: dict[str, int] = {}  # model -> highest request id delivered
        self._latest: dict[str, Result] = {}  # model -> newest reply not yet returned
        self._awaited: dict[int, Union[Result, ProtocolError]] = {}

    def next_request_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def track(self, request_id: int, model_id: str, awaited: bool) -> None:
        """Record an outstanding request; call before sending so no reply can outrun it."""
        if len(self._outstanding) >= self.MAX_OUTSTANDING:
            del self._outstanding[next(iter(self._outstanding))]
        self._outstanding[request_id] = _Outstanding(model_id, self._clock(), _AWAITED if awaited else _LATEST)

    def sent(self) -> None:
        self.stats.sent += 1

    def untrack(self, request_id: int) -> None:
        """The send failed: forget the request."""
        self._outstanding.pop(request_id, None)
        self.stats.send_failed += 1

    def abandon(self, request_id: int) -> None:
        """Its request() gave up: a late reply is dropped as stale."""
        self._awaited.pop(request_id, None)
        p = self._outstanding.get(request_id)
        if p is not None:
            p.mode = _ABANDONED

    def take_latest(self, model_id: str) -> Optional[Result]:
        return self._latest.pop(model_id, None)

    def take_awaited(self, request_id: int) -> Optional[Union[Result, ProtocolError]]:
        return self._awaited.pop(request_id, None)

    def outstanding(self) -> int:
        return len(self._outstanding)

    def on_reply(self, frames: Sequence[Any]) -> tuple[Delivery, ...]:
        """Match one reply; returns where it went (nothing when it was dropped and counted)."""
        stats = self.stats
        stats.received += 1
        try:
            resp, segments = parse_reply(frames, self._limits)
        except WireError as err:
            stats.malformed_dropped += 1
            log.debug("dropped a malformed reply: %s", err)
            return _NOTHING
        model_id, rid = resp.model_id, resp.request_id
        if rid == 0:
            if resp.protocol_version >= 2:
                # The server could not read one of our observations (its envelope did not
                # parse, or its framing was broken), so it cannot say which: every request()
                # waiting now fails with the server's reason rather than time out.
                stats.malformed_dropped += 1
                log.debug("the server could not read an observation: %s", resp.error)
                return self._fail_waiters(resp.error)
            rid = self._oldest_outstanding(model_id)  # 1.x servers echo no id: assume FIFO
        p = self._outstanding.get(rid) if rid else None
        if p is None or p.model_id != model_id:
            stats.unknown_dropped += 1
            log.debug("dropped a reply to unknown request %d of model %r", rid, model_id)
            return _NOTHING
        del self._outstanding[rid]

        rtt_ms = (self._clock() - p.sent_ns) / 1e6
        try:
            check_reply_envelope(resp, self._limits)
            result = build_result(resp, segments, self._limits, rtt_ms)
        except WireError as err:
            stats.malformed_dropped += 1
            log.debug("dropped a malformed reply to request %d: %s", rid, err)
            if p.mode == _AWAITED:
                # A ProtocolError, not the WireError itself: that one is also a ValueError,
                # which says "your input" to the caller, and the fault is the reply's.
                failure = ProtocolError(f"malformed reply to request {rid} of model '{model_id}': {err}")
                failure.__cause__ = err
                self._awaited[rid] = failure
                return ((model_id, rid, True),)
            return _NOTHING
        result.request_id = rid
        name = result.status_name
        stats.by_status[name] = stats.by_status.get(name, 0) + 1
        superseded = result.status == pb.SUPERSEDED

        if p.mode == _AWAITED:
            self._awaited[rid] = result
            if not superseded:
                self._advance(model_id, rid)
            return ((model_id, rid, True),)
        if p.mode == _ABANDONED:
            stats.stale_dropped += 1
            return _NOTHING
        if superseded:
            # A newer observation for this model is on its way; its reply is the one to return.
            return _NOTHING
        if rid < self._newest.get(model_id, 0):
            stats.stale_dropped += 1
            log.debug("dropped stale reply %d of model %r", rid, model_id)
            return _NOTHING
        self._advance(model_id, rid)
        self._latest[model_id] = result
        return ((model_id, rid, False),)

    def _fail_waiters(self, reason: str) -> tuple[Delivery, ...]:
        failed = []
        for rid, p in self._outstanding.items():
            if p.mode == _AWAITED:
                p.mode = _ABANDONED  # its own reply, should one still come, is stale
                self._awaited[rid] = ProtocolError(
                    f"the server could not read an observation of this connection "
                    f"(reply with request id 0): {reason or 'no reason given'}"
                )
                failed.append((p.model_id, rid, True))
        return tuple(failed)

    def _advance(self, model_id: str, rid: int) -> None:
        if rid > self._newest.get(model_id, 0):
            self._newest[model_id] = rid
        unread = self._latest.get(model_id)
        if unread is not None and unread.request_id < rid:
            del self._latest[model_id]
            self.stats.stale_dropped += 1

    def _oldest_outstanding(self, model_id: str) -> int:
        for rid, p in self._outstanding.items():
            if p.model_id == model_id and p.mode != _ABANDONED:
                return rid
        return 0

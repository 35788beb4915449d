"""The ledger: every admitted observation ends in exactly one reply.

``pending`` holds each admitted request, oldest first, until it is answered. Every
path that answers one (result, model error, expiry, shedding, cancellation,
shutdown) goes through :meth:`Ledger.answer`, which pops it first, so a second
answer is impossible. The ledger also counts replies by status and records the
per-request metrics of each reply.

A result that is ready only after its request's deadline is not sent as OK: a late
action is worse than an early refusal, so it goes out as ``DEADLINE_UNMEETABLE`` (the
request could not be served by its deadline) and is counted
(``late_results_withheld``), unless ``scheduling.late_results`` is ``send``. The
deadline is the one the scheduler planned for (the robot's, less
``scheduling.deadline_margin_ms`` for the way back), so a reply that leaves in time
still has that margin to reach the robot. Exempt: action chunks (a late chunk still
ends the robot's hold, and its ``valid_until_ns`` says how long its actions hold) and
requests marked ``late_ok`` (an allowance shorter than the model's run time alone: a
mismatch of configuration, which must not make the model unusable for that robot).

A reply ZMQ cannot deliver because the peer disconnected is *reported*, not acted
on: the identity goes to ``gone``, and the server unregisters the robot afterwards
(:meth:`Ledger.take_gone`), outside any reply, dropping that robot's other
requests silently rather than sending to a peer already known to be gone.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Callable, Container, Mapping, Optional

from inferential.metrics.store import CounterKey, MetricsStore
from inferential.scheduler import InferenceRequest
from inferential.server.chunking import ChunkReply, reply_fields
from inferential.server.protocol import (
    Rejection,
    ReplyTiming,
    encode_reply,
    native_chunk,
    native_outputs,
    native_timing,
)
from inferential.server.registry import ClientRegistry
from inferential.server.reply_check import reply_violation
from inferential.server.transport import RouterTransport
from inferential.wire import Limits, Status, status_name

logger = logging.getLogger("inferential.server")

# Plain ints on the reply path: reading an IntEnum member costs a descriptor call (~150 ns
# on 3.11) and hashing one a Python-level call, per reply.
_OK, _SUPERSEDED, _MODEL_ERROR = int(Status.OK), int(Status.SUPERSEDED), int(Status.MODEL_ERROR)
_UNMEETABLE = int(Status.DEADLINE_UNMEETABLE)
# The shed statuses with a counter of their own besides `replies`.
_SHED_METRIC = {int(Status.QUEUE_FULL): "queue_full_drops", int(Status.EXPIRED): "requests_expired"}
PEER_GONE = "peer disconnected"


def request_labels(req: InferenceRequest) -> dict[str, str]:
    """The (robot, model) labels of a request's metrics, made once per request."""
    labels = req.labels
    if labels is None:
        labels = req.labels = {"client": req.client_id, "model": req.model_id}
    return labels


class Ledger:
    """The exactly-once table and the reply path."""

    def __init__(self, metrics: MetricsStore, registry: ClientRegistry, clock: Callable[[], int]) -> None:
        self.pending: dict[int, InferenceRequest] = {}
        self.status_counts: dict[str, int] = defaultdict(int)
        #: of those, refusals the native transport answered itself: the loop never saw them
        self.refused_natively = 0
        #: Identities whose reply failed because the peer disconnected, not yet acted on.
        self.gone: list[bytes] = []
        self.transport: Optional[RouterTransport] = None
        self.stopping = False
        self.replies_while_stopping = 0
        #: The native module's ``Router.reply`` when the transport is native: replies it
        #: can encode (array and string outputs) are encoded and sent without Python.
        self.native_reply: Optional[Callable[..., Optional[str]]] = None
        #: ``Router.check_input``, once after the replies of a batch (``replies``).
        self.native_check: Optional[Callable[[], None]] = None
        self._in_batch = False
        self._unchecked = False
        self._batch_replies = _BatchReplies(self)
        #: The protocol limits every reply is checked against (set by the server; None: unchecked).
        self.limits: Optional[Limits] = None
        #: The models served: a rejection names its model in metrics only when it is one of
        #: them (a model id is whatever the sender wrote: it must not become a label).
        self.models: Container[str] = ()
        self._metrics = metrics
        self._registry = registry
        self._clock = clock
        #: (model, status) -> the status's name, the labels and the counter of its replies
        self._reply_labels: dict[tuple[str, int], tuple[str, dict[str, str], CounterKey]] = {}
        #: Withhold results ready after their deadline (scheduling.late_results: withhold).
        self.withhold_late = True
        #: Results withheld so far.
        self.withheld = 0

    def replies(self) -> "_BatchReplies":
        """Around the replies of one batch (``with ledger.replies():``): the native module
        looks for input its sends may have hidden from its I/O thread once, after the last
        (``Router.check_input``), instead of after each (a system call). A plain context
        manager, not a generator's: it runs once per batch on the event loop."""
        return self._batch_replies

    def _end_batch(self) -> None:
        self._in_batch = False
        if self._unchecked:
            self._unchecked = False
            assert self.native_check is not None
            self.native_check()

    def answer(
        self,
        request: InferenceRequest,
        status: int,
        reason: str = "",
        outputs: Optional[Mapping[str, Any]] = None,
        timing: Optional[ReplyTiming] = None,
    ) -> None:
        """Reply to ``request`` unless it was answered already; ``reason`` is the
        reply's error text. Installed as every scheduler's ``on_shed`` too."""
        if self.pending.pop(request.seq, None) is None:
            return  # already answered: exactly one reply per observation
        request.settled = True
        now = self._clock()
        if status == _OK and self.withhold_late:
            deadline = request.deadline_ns
            if deadline is not None and now > deadline and not request.chunked and not request.late_ok:
                late_ms = (now - deadline) / 1e6
                status, outputs = _UNMEETABLE, None
                reason = f"the result was ready {late_ms:.1f} ms after the deadline (margin included): withheld, a late action is worse than none"
                self.withheld += 1
                self._metrics.increment("late_results_withheld", {"model": request.model_id})
        timing = timing or ReplyTiming()
        timing.total_ms = (now - request.arrival_ns) / 1e6
        chunk = reply_fields(request, timing.total_ms) if status == _OK else None
        if not self._send_native(request, status, reason, outputs, timing, chunk):
            status = self._encode_and_send(request, status, reason, outputs, timing, chunk)
        # Bookkeeping after the reply is on its way.
        labels = request_labels(request)
        metrics = self._metrics
        metric = _SHED_METRIC.get(status)
        if metric:
            metrics.increment(metric, labels)
        if status == _OK:
            metrics.record("scheduling_wait_ms", timing.queue_wait_ms, labels)
            metrics.record("e2e_latency_ms", timing.total_ms, labels)
            if chunk is not None and chunk.action_period_ms and request.predicted_delay_ms is not None:
                # Signed, in control steps: > 0 when the reply came later than predicted.
                error = chunk.actual_delay_steps - chunk.predicted_delay_steps
                metrics.record("delay_prediction_error_steps", error, labels)
        if status != _SUPERSEDED:  # a superseded request's robot got a fresher answer
            met = status == _OK and timing.total_ms <= request.latency_budget_ms
            metrics.record("slo_met", 1.0 if met else 0.0, labels)
        robot = self._registry.robots.get(request.client_id)
        if robot is not None:
            robot.last_status = status_name(status)

    def _send_native(
        self,
        request: InferenceRequest,
        status: int,
        reason: str,
        outputs: Optional[Mapping[str, Any]],
        timing: ReplyTiming,
        chunk: Optional[ChunkReply],
    ) -> bool:
        """The reply encoded and sent by the native module; False when there is none or it
        cannot carry these outputs as they are (``protocol.native_outputs``) or the reply
        would break the limits: then the Python encoder sends it and words why."""
        native = self.native_reply
        prepared = native_outputs(outputs) if native is not None else None
        if prepared is None:
            return False
        try:
            failure = native(  # type: ignore[misc]
                request.identity,
                request.client_id,
                request.model_id,
                request.request_id,
                request.protocol_version,
                status,
                reason,
                request.observation_timestamp_ns,
                request.retry_after_ms,
                native_timing(timing),
                native_chunk(chunk),
                prepared[0],
                prepared[1],
                not self._in_batch,
            )
        except (TypeError, ValueError, BufferError, OverflowError):
            return False
        self._unchecked = self._in_batch
        self._sent(failure, request.identity, request.model_id, status, request.client_id)
        return True

    def _encode_and_send(
        self,
        request: InferenceRequest,
        status: int,
        reason: str,
        outputs: Optional[Mapping[str, Any]],
        timing: ReplyTiming,
        chunk: Optional[ChunkReply],
    ) -> int:
        """The reply encoded by ``protocol.encode_reply``, checked against the limits and
        sent; the status sent (MODEL_ERROR when the outputs cannot go on the wire)."""
        common = dict(
            identity=request.identity,
            client_id=request.client_id,
            model_id=request.model_id,
            request_id=request.request_id,
            protocol_version=request.protocol_version,
            timing=timing,
            observation_timestamp_ns=request.observation_timestamp_ns,
            now_ns=time.time_ns(),
            retry_after_ms=request.retry_after_ms,  # set only by a QUEUE_FULL or DEADLINE_UNMEETABLE shed
        )
        if chunk is not None:
            common["chunk"] = chunk
        try:
            frames = encode_reply(status=status, error=reason, outputs=outputs, **common)  # type: ignore[arg-type]
            if outputs and self.limits is not None:  # what the robot would drop (or lose its connection over)
                broken = reply_violation(frames, outputs, self.limits)
                if broken is not None:
                    logger.warning(
                        "reply of %s to %s over the protocol limits: %s", request.model_id, request.client_id, broken
                    )
                    raise ValueError(f"the reply would break the protocol limits: {broken}")
        except (TypeError, ValueError) as err:  # an output the wire cannot carry
            status, reason = _MODEL_ERROR, f"model output cannot be sent: {err}"
            frames = encode_reply(status=status, error=reason, **common)  # type: ignore[arg-type]
        self.send(frames, request.identity, request.model_id, status, request.client_id)
        return status

    def drop(self, req: InferenceRequest) -> None:
        """Settle ``req`` without a reply: its peer is known to be gone."""
        req.settled = True
        if self.pending.pop(req.seq, None) is not None:
            self._metrics.increment("replies_undeliverable", {"model": req.model_id, "reason": PEER_GONE})

    def reject(self, identity: bytes, rej: Rejection, wall_ns: int) -> None:
        """Answer an observation refused before admission (never in ``pending``)."""
        obs = rej.obs
        client_id = obs.client.id if obs is not None else ""
        model_id = obs.model_id if obs is not None else ""
        logger.debug("rejected observation from %r: %s", client_id or identity, rej)
        label_model = model_id if model_id in self.models else ""
        self._metrics.increment("observation_errors", {"status": status_name(rej.status)})
        if not identity:
            return
        frames = encode_reply(
            identity=identity,
            client_id=client_id,
            model_id=model_id,
            request_id=obs.request_id if obs is not None else 0,
            protocol_version=obs.protocol_version if obs is not None else 2,
            status=rej.status,
            error=rej.message,
            observation_timestamp_ns=obs.timestamp_ns if obs is not None else 0,
            now_ns=wall_ns,
        )
        self.send(frames, identity, label_model, rej.status)

    def count_refused(
        self,
        replies: list[tuple[str, int, int]],
        undeliverable: list[tuple[str, str, int]],
        gone: list[bytes],
    ) -> None:
        """Count refusals the native transport answered itself (``take_refusals``): each
        is what :meth:`reject` would have counted for it, one observation and one reply."""
        metrics = self._metrics
        for model_id, status, count in replies:
            self.refused_natively += count
            name = self._count_replies(model_id, status, count)
            metrics.increment("observation_errors", {"status": name}, count)
            metrics.increment("native_refusals", {"status": name}, count)
        for model_id, reason, count in undeliverable:
            metrics.increment("replies_undeliverable", {"model": model_id, "reason": reason}, count)
        self.gone.extend(gone)

    def send(self, frames: list[Any], identity: bytes, model_id: str, status: int, client_id: str = "") -> None:
        transport = self.transport
        assert transport is not None
        self._sent(transport.send(frames), identity, model_id, status, client_id)

    def _sent(self, failure: Optional[str], identity: bytes, model_id: str, status: int, client_id: str) -> None:
        """Count a reply handed to the transport (``failure``: why it could not take it)."""
        if self.stopping:
            self.replies_while_stopping += 1
        name = self._count_replies(model_id, status, 1)
        if failure is None:
            return
        self._metrics.increment("replies_undeliverable", {"model": model_id, "reason": failure})
        logger.info("reply %s for %s undeliverable: %s", name, client_id or identity, failure)
        if failure == PEER_GONE:
            self.gone.append(identity)

    def _count_replies(self, model_id: str, status: int, count: int) -> str:
        """Count ``count`` replies of ``status`` for ``model_id``; the status's name."""
        series = self._reply_labels.get((model_id, status))
        if series is None:
            name = status_name(status)
            labels = {"model": model_id, "status": name}
            key = self._metrics.counter_key("replies", labels)
            series = self._reply_labels[(model_id, status)] = (name, labels, key)
        name, labels, key = series
        self.status_counts[name] += count
        self._metrics.increment_key(key, labels, count)
        return name

    def take_gone(self) -> list[bytes]:
        """The identities reported gone since the last call."""
        gone, self.gone = self.gone, []
        return gone


class _BatchReplies:
    """``Ledger.replies()``: marks the replies sent inside as one batch's."""

    __slots__ = ("_ledger",)

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __enter__(self) -> None:
        self._ledger._in_batch = True

    def __exit__(self, *exc: object) -> None:
        self._ledger._end_batch()

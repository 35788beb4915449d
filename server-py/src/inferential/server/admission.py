"""Admission: a decoded observation becomes an InferenceRequest, or a Rejection.

:func:`admit` is the server's receive step after decoding, with no I/O and no
clock of its own (the caller passes both clock readings), so it is unit-tested on
a fake clock. Its only side effect is the registry's: it records the robot's
arrival (cadence, routing identity) once the robot may use the model, also when
the observation is then refused for having waited too long.

Checks, in order: access (UNAUTHENTICATED), the model is served (UNKNOWN_MODEL),
and the time the observation already spent in socket buffers: past the TTL it is
EXPIRED, past its budget (with ``admission: reject``) DEADLINE_UNMEETABLE, rather
than spend the server's time scheduling what cannot be on time. A request whose robot
stated no time limit is marked (``budget_stated`` False): the scheduler may tighten its
default deadline to the robot's cadence. That time is
estimated per connection from the robot's timestamps and never exceeds what the
transport measured (``backlog_ns``): a timestamp alone never rejects.
"""

from __future__ import annotations

from typing import Container, Optional, Union

from inferential.config.schema import SchedulingConfig
from inferential.scheduler import InferenceRequest, derive_deadline_ns
from inferential.server.early import EarlyRefusal
from inferential.server.protocol import Decoded, Rejection
from inferential.server.registry import ClientRegistry
from inferential.wire import Status


def admit(
    decoded: Decoded,
    identity: bytes,
    registry: ClientRegistry,
    models: Container[str],
    config: SchedulingConfig,
    now_ns: int,
    wall_ns: int,
    backlog_ns: Optional[int] = None,
    early: Optional[EarlyRefusal] = None,
) -> Union[InferenceRequest, Rejection]:
    """The request for ``decoded`` (from ``identity``), or the Rejection to answer.

    ``now_ns`` is the server's monotonic clock, ``wall_ns`` the wall clock, both
    read when the message was taken off the socket. ``backlog_ns`` is the measured
    bound on how long it can have waited for the server (the transport's
    ``backlog_bound_ns``); None trusts the timestamps alone (unit tests, replay).
    ``early``: the native module's shedding rule, applied here on the Python transport.
    """
    obs = decoded.obs
    client_id = obs.client.id
    denied = registry.check_access(client_id, obs.auth_token)
    if denied is not None:
        return Rejection(Status.UNAUTHENTICATED, denied, obs)
    if obs.model_id not in models:
        served = ", ".join(sorted(models)) or "none"  # type: ignore[call-overload]
        return Rejection(Status.UNKNOWN_MODEL, f"model '{obs.model_id}' is not served (served: {served})", obs)
    budget_ms = registry.budget_for(client_id, obs.latency_budget_ms)
    # Under overload observations queue in socket buffers, unseen by the scheduler:
    # date them from when they arrived.
    waited_ns = registry.buffer_wait_ns(identity, wall_ns, obs.timestamp_ns, backlog_ns)
    waited_ms = waited_ns / 1e6
    arrival = now_ns - waited_ns
    # Counted in the robot's cadence even when refused below: a robot that states no budget
    # has its deadline tightened to its cadence, which must not look slower under overload.
    _, _, expected_ms, gap_ms = registry.on_observation(client_id, obs.client.type, obs.model_id, identity, arrival)
    if waited_ms > config.request_ttl_ms:
        why = f"waited {waited_ms:.0f} ms before the server could read it, TTL is {config.request_ttl_ms:.0f} ms"
        return Rejection(Status.EXPIRED, why, obs)
    # A chunk request (it states its control rate) is never refused for lateness: a late chunk
    # still ends the robot's hold (scheduling.md, chunks.md); the TTL above still applies.
    if config.admission == "reject" and waited_ms > budget_ms and not obs.control_rate_hz > 0:
        why = f"waited {waited_ms:.0f} ms before the server could read it, budget is {budget_ms:.0f} ms"
        return Rejection(Status.DEADLINE_UNMEETABLE, why, obs)
    known = registry.clients.get(client_id)
    stated = obs.latency_budget_ms > 0 or (known is not None and known.latency_budget_ms is not None)
    priority = registry.priority_for(client_id, obs.priority, config.max_priority)
    if early is not None and config.admission == "reject":
        # The native module's rule, on the Python transport (server/early.py).
        judged_ms = budget_ms
        if not stated:
            judged_ms = early.stream_budget(client_id, identity, obs.model_id) or budget_ms
        refused = early.judge(obs, judged_ms, priority, waited_ns, now_ns)
        if refused is not None:
            return refused
        early.queued(obs.model_id)
    req = InferenceRequest(
        client_id=client_id,
        model_id=obs.model_id,
        inputs=decoded.inputs,
        request_id=obs.request_id,
        client_type=obs.client.type,
        urgency=min(1.0, obs.urgency),
        priority=priority,
        steps_remaining=obs.steps_remaining if obs.HasField("steps_remaining") else None,
        arrival_ns=arrival,
        latency_budget_ms=budget_ms,
        observation_timestamp_ns=obs.timestamp_ns,
        actions_remaining=obs.actions_remaining if obs.HasField("actions_remaining") else None,
        control_rate_hz=obs.control_rate_hz,
        control_step=obs.control_step if obs.HasField("control_step") else None,
        expected_interval_ms=expected_ms,
        since_previous_ms=gap_ms,
        identity=identity,
        protocol_version=obs.protocol_version,
        payload_bytes=decoded.payload_bytes,
        labels={"client": client_id, "model": obs.model_id},
    )
    deadline_ns = derive_deadline_ns(
        arrival_ns=arrival,
        wall_now_ns=wall_ns - waited_ns,
        deadline_wall_ns=obs.deadline_ns,
        actions_remaining=req.actions_remaining,
        control_rate_hz=req.control_rate_hz,
        latency_budget_ms=budget_ms,
    )
    if deadline_ns is not None:
        # The reply still has to cross the network after the server is done with it.
        deadline_ns -= int(config.deadline_margin_ms * 1e6)
    req.deadline_ns = deadline_ns
    if not obs.deadline_ns and not (req.actions_remaining is not None and req.control_rate_hz > 0):
        # Nothing on the wire bounds it: a 1.x robot, or one that leaves it to the server.
        req.budget_stated = stated
    return req

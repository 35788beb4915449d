"""What a user sets: connection options (one frozen dataclass, shared by the sync and async
clients) and the scheduling hints of one observation (declared once, here)."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional, TypeVar, Union, get_type_hints

from inferential.wire.limits import DEFAULT_LIMITS, Limits


@dataclass(frozen=True)
class ClientOptions:
    """How a Connection talks to the server. Every time is in milliseconds.

    Reconnection (docs/protocol.md, "Connection management"): after a failed or
    lost connection libzmq waits ``reconnect_ivl_ms``, doubling the wait after each
    failed attempt up to ``reconnect_ivl_max_ms``.

    Attributes:
        reconnect_ivl_ms: first reconnection delay (ZMQ_RECONNECT_IVL), at least 1: libzmq
            reads 0 as "never reconnect", which a robot never wants.
        reconnect_ivl_max_ms: cap of the doubling delay (ZMQ_RECONNECT_IVL_MAX);
            0 means no doubling, every attempt after ``reconnect_ivl_ms``.
        heartbeat_ivl_ms: how often an idle connection is probed (TCP keepalive, whole
            seconds, at least 1); 0 leaves the kernel's defaults. No ZMTP PINGs are sent:
            their timer can abort the process in libzmq 4.3.x (inferential.liveness).
        heartbeat_timeout_ms: a server silent this long (probes unanswered, or data
            unacknowledged: ZMQ_TCP_MAXRT) is treated as gone and the connection is
            re-established.
        send_timeout_ms: longest ``observe()`` waits for a connected server with
            room in its queue before raising ServerUnavailable (ZMQ_SNDTIMEO).
        default_timeout_ms: ``get_result()`` wait when no timeout is given.
        request_timeout_ms: ``request()`` wait when no timeout is given.
        send_hwm / recv_hwm: messages queued per direction (ZMQ_SNDHWM / ZMQ_RCVHWM).
        auth_token: shared secret sent in every observation, when the server wants one.
        zero_copy_min_bytes: payload frames at least this large are handed to libzmq
            without a copy; do not write into such an array until its reply has
            arrived. None copies every frame.
        single_payload_frame: join the tensor bytes into exactly one payload frame,
            as 1.x servers (which read only one) require.
        limits: the bounds checked on outgoing observations and incoming replies;
            keep them equal to the server's.
        curve_server_key: the server's CURVE public key (Z85, 40 characters); with it
            the connection is encrypted and authenticated (ZMQ CURVE), and
            ``curve_public_key`` / ``curve_secret_key`` (this robot's key pair, from
            ``inferential keys generate``) are required. None: no CURVE.
    """

    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 5000
    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 5000
    send_timeout_ms: int = 1000
    default_timeout_ms: int = 100
    request_timeout_ms: int = 1000
    send_hwm: int = 100
    recv_hwm: int = 100
    auth_token: Optional[str] = None
    zero_copy_min_bytes: Optional[int] = 1 << 20
    single_payload_frame: bool = False
    limits: Limits = field(default=DEFAULT_LIMITS)
    curve_server_key: Optional[str] = None
    curve_public_key: Optional[str] = None
    curve_secret_key: Optional[str] = field(default=None, repr=False)  # a secret: never in a repr or log

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("auth_token", "single_payload_frame", "limits") or f.name.startswith("curve_"):
                continue
            if value is None and f.name == "zero_copy_min_bytes":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ClientOptions.{f.name} must be an int >= 0, got {value!r}")
        if self.reconnect_ivl_ms == 0:
            raise ValueError("ClientOptions.reconnect_ivl_ms must be >= 1: libzmq reads 0 as 'never reconnect'")
        if self.reconnect_ivl_max_ms and self.reconnect_ivl_max_ms < self.reconnect_ivl_ms:
            raise ValueError(
                "ClientOptions.reconnect_ivl_max_ms must be 0 or >= reconnect_ivl_ms "
                f"({self.reconnect_ivl_max_ms} < {self.reconnect_ivl_ms})"
            )
        if self.auth_token is not None and not isinstance(self.auth_token, str):
            raise TypeError("ClientOptions.auth_token must be a str or None")
        if not isinstance(self.limits, Limits):
            raise TypeError("ClientOptions.limits must be an inferential.Limits")
        curve = (self.curve_server_key, self.curve_public_key, self.curve_secret_key)
        for name, key in zip(("curve_server_key", "curve_public_key", "curve_secret_key"), curve, strict=True):
            if key is not None and (not isinstance(key, str) or len(key) != 40):
                raise ValueError(f"ClientOptions.{name} must be a Z85 key of 40 characters")
        if any(k is not None for k in curve) and None in curve:
            raise ValueError(
                "CURVE needs curve_server_key, curve_public_key and curve_secret_key together "
                "(a robot's pair: inferential keys generate)"
            )

    def replace(self, **changes: Any) -> "ClientOptions":
        """A copy with ``changes`` applied (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)


# Keyword names the 1.x Connection accepted, mapped to their ClientOptions field.
_LEGACY_NAMES = {"reconnect_max_ms": "reconnect_ivl_max_ms"}


def resolve_options(options: Optional[ClientOptions], overrides: dict[str, Any]) -> ClientOptions:
    base = options if options is not None else ClientOptions()
    if not isinstance(base, ClientOptions):
        raise TypeError(f"options must be a ClientOptions, got {type(base).__name__}")
    if not overrides:
        return base
    changes = {_LEGACY_NAMES.get(k, k): v for k, v in overrides.items()}
    names = {f.name for f in dataclasses.fields(ClientOptions)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"unknown connection option(s): {', '.join(unknown)}")
    return dataclasses.replace(base, **changes)


class ObservationHints(NamedTuple):
    """The scheduling hints of one observation: keyword arguments of ``observe()`` and
    ``request()`` (sync and asyncio), declared once here. (A NamedTuple: built on every
    observation, it costs a fraction of a frozen dataclass.)

    Attributes:
        urgency: 0..1, how much the robot needs this answer soon.
        steps_remaining: steps left in the robot's trajectory.
        priority: overrides the model handle's priority (0 = highest); None keeps it.
        deadline_ns: absolute deadline, Unix epoch ns.
        actions_remaining: actions left in the robot's action queue.
        control_rate_hz: rate at which the robot consumes those actions.
        control_step: the robot's control step when the sensors were read; row 0 of a
            chunked reply applies to it (``Result.first_action_step`` echoes it).
    """

    urgency: float = 0.0
    steps_remaining: Optional[int] = None
    priority: Optional[int] = None
    deadline_ns: Optional[int] = None
    actions_remaining: Optional[int] = None
    control_rate_hz: Optional[Union[int, float]] = None
    control_step: Optional[int] = None

    @classmethod
    def take(cls, inputs: dict[str, Any]) -> "ObservationHints":
        """Remove the hint keywords from ``inputs`` (the rest are tensors and metadata)."""
        if inputs.keys().isdisjoint(cls._fields):
            return _NO_HINTS
        return cls(**{name: inputs.pop(name) for name in cls._fields if name in inputs})


_NO_HINTS = ObservationHints()

_F = TypeVar("_F", bound=Callable[..., Any])


def takes_hints(method: _F) -> _F:
    """Show the hints in ``method``'s signature (help(), IDEs) ahead of its ``**inputs``."""
    sig = inspect.signature(method)
    annotations = get_type_hints(ObservationHints)
    params = list(sig.parameters.values())
    hints = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotations[name])
        for name, default in ObservationHints._field_defaults.items()
    ]
    method.__signature__ = sig.replace(parameters=params[:-1] + hints + params[-1:])  # type: ignore[attr-defined]
    return method

"""The Python testee: the `inferential` client driven over conformance/TESTEE.md.

Reads one JSON command per line on stdin, answers one JSON line on stdout. Socket
commands go through the public API (Connection, model handles, typed errors); `encode`
and `decode` call the client's codec module directly, with no socket.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import traceback
from typing import Any, Optional

import numpy as np
import zmq

import inferential
from inferential import _envelope
from inferential._proto import inferential_pb2 as pb
from inferential.errors import (
    ConnectionClosed,
    InferentialError,
    ProtocolError,
    RequestFailed,
    RequestTimeout,
    ServerUnavailable,
    error_for_status,
)
from inferential.chunks import ActionChunkQueue
from inferential.options import ClientOptions, ObservationHints
from inferential.wire import BFloat16
from inferential.wire.limits import DEFAULT_LIMITS

_STATUS_KINDS = {
    pb.INVALID_REQUEST: "invalid_request",
    pb.UNKNOWN_MODEL: "unknown_model",
    pb.MODEL_ERROR: "model_error",
    pb.EXPIRED: "expired",
    pb.QUEUE_FULL: "queue_full",
    pb.DEADLINE_UNMEETABLE: "deadline_unmeetable",
    pb.SUPERSEDED: "superseded",
    pb.UNAUTHENTICATED: "unauthenticated",
    pb.SHUTTING_DOWN: "shutting_down",
    pb.CANCELLED: "cancelled",
}
_NUMPY = {
    "FLOAT16": "<f2", "FLOAT32": "<f4", "FLOAT64": "<f8", "UINT8": "u1", "INT32": "<i4",
    "INT64": "<i8", "BOOL": "bool", "INT8": "i1", "INT16": "<i2", "UINT16": "<u2",
    "UINT32": "<u4", "UINT64": "<u8",
}  # fmt: skip
_OPTION_NAMES = (
    "reconnect_ivl_ms", "reconnect_ivl_max_ms", "send_timeout_ms", "heartbeat_ivl_ms",
    "heartbeat_timeout_ms", "send_hwm", "recv_hwm", "auth_token", "single_payload_frame",
    "curve_server_key", "curve_public_key", "curve_secret_key",
)  # fmt: skip


def _status_name(status: int) -> str:
    return pb.Status.Name(status) if status in pb.Status.values() else str(int(status))


def error_json(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, RequestFailed):
        return {
            "kind": _STATUS_KINDS.get(int(exc.status), "unknown_status"),
            "message": exc.message,
            "status": _status_name(int(exc.status)),
            "retryable": bool(exc.retryable),
            "retry_after_ms": int(getattr(exc, "retry_after_ms", 0) or 0),
            "request_id": str(exc.request_id),
        }
    if isinstance(exc, RequestTimeout):
        return {"kind": "timeout", "message": str(exc)}
    if isinstance(exc, ServerUnavailable):
        return {"kind": "server_unavailable", "message": str(exc)}
    if isinstance(exc, ConnectionClosed):
        return {"kind": "closed", "message": str(exc)}
    if isinstance(exc, ProtocolError) and not isinstance(exc, inferential.WireError):
        return {"kind": "protocol", "message": str(exc)}
    if isinstance(exc, (ValueError, TypeError, inferential.WireError)):
        return {"kind": "invalid_argument", "message": str(exc)}
    if isinstance(exc, InferentialError):
        return {"kind": "protocol", "message": str(exc)}
    return {"kind": "testee_bug", "message": "".join(traceback.format_exception(exc))[-2000:]}


def tensor_value(t: dict[str, Any]) -> Any:
    data = bytes.fromhex(t["data"])
    shape = tuple(int(d) for d in t["shape"])
    if t["dtype"] == "BFLOAT16":
        return BFloat16(np.frombuffer(data, "<u2").reshape(shape))
    return np.frombuffer(data, _NUMPY[t["dtype"]]).reshape(shape)


def observation_inputs(args: dict[str, Any]) -> dict[str, Any]:
    """observe()'s keyword arguments: tensors, metadata strings and the scheduling hints."""
    inputs: dict[str, Any] = {t["key"]: tensor_value(t) for t in args.get("tensors", [])}
    inputs.update(args.get("metadata", {}))
    model = args.get("model", {})
    if args.get("urgency") is not None:
        inputs["urgency"] = args["urgency"]
    if args.get("steps_remaining") is not None:
        inputs["steps_remaining"] = int(args["steps_remaining"])
    if model.get("deadline_ns") not in (None, "0", 0):
        inputs["deadline_ns"] = int(model["deadline_ns"])
    if model.get("actions_remaining") is not None:
        inputs["actions_remaining"] = int(model["actions_remaining"])
    if model.get("control_rate_hz"):
        inputs["control_rate_hz"] = float(model["control_rate_hz"])
    if args.get("control_step") is not None:
        inputs["control_step"] = int(args["control_step"])
    return inputs


def reply_json(result: Any) -> dict[str, Any]:
    tensors = []
    for key in result:
        array = result[key]
        dtype = result.wire_dtype(key)
        raw = array.view(np.uint16) if dtype == "BFLOAT16" else array
        tensors.append(
            {
                "key": key,
                "dtype": dtype,
                "shape": list(array.shape),
                "data": np.ascontiguousarray(raw).tobytes().hex(),
                "aligned": bool(array.flags.aligned),
            }
        )
    timing = result.timing
    return {
        "status": _status_name(int(result.status)),
        "request_id": str(result.request_id),
        "model_id": result.model_id,
        "protocol_version": result.protocol_version,
        "retryable": bool(result.retryable),
        "error": result.error,
        "retry_after_ms": int(result.retry_after_ms),
        "timing": None
        if timing is None
        else {
            "queue_wait_ms": timing.queue_wait_ms,
            "inference_ms": timing.inference_ms,
            "total_ms": timing.total_ms,
            "batch_size": timing.batch_size,
        },
        "tensors": tensors,
        "metadata": dict(result.metadata),
        "first_action_step": None if result.first_action_step is None else str(result.first_action_step),
        "action_period_ms": result.action_period_ms,
        "predicted_delay_steps": result.predicted_delay_steps,
        "actual_delay_steps": result.actual_delay_steps,
        "valid_until_ns": None if result.valid_until_ns is None else str(result.valid_until_ns),
    }


class Worker:
    def __init__(self) -> None:
        self.conn: Optional[inferential.Connection] = None
        self.models: dict[str, Any] = {}

    def model(self, spec: dict[str, Any]) -> Any:
        assert self.conn is not None, "connect first"
        key = json.dumps(spec, sort_keys=True)
        if key not in self.models:
            kwargs = {}
            if spec.get("latency_budget_ms") is not None:
                kwargs["latency_budget_ms"] = float(spec["latency_budget_ms"])
            if spec.get("priority") is not None:
                kwargs["priority"] = int(spec["priority"])
            self.models[key] = self.conn.model(spec["model_id"], **kwargs)
        return self.models[key]

    def handle(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        if cmd == "hello":
            return {"language": "python", "client_version": getattr(inferential, "__version__", "2")}
        if cmd == "connect":
            options = {k: v for k, v in args.get("options", {}).items() if k in _OPTION_NAMES and v is not None}
            if options.get("auth_token") == "":
                options.pop("auth_token")
            opts = args.get("options", {})
            if opts.get("max_message_bytes") is not None:
                options["limits"] = dataclasses.replace(DEFAULT_LIMITS, max_message_bytes=int(opts["max_message_bytes"]))
            self.conn = inferential.Connection(
                server=args["endpoint"],
                client_id=opts.get("client_id"),
                client_type=opts.get("client_type", ""),
                options=ClientOptions(**options),
            )
            return {}
        if cmd == "observe":
            return {"request_id": str(self.model(args["model"]).observe(**observation_inputs(args)))}
        if cmd == "request":
            inputs = observation_inputs(args)
            return {"reply": reply_json(self.model(args["model"]).request(timeout_ms=args.get("timeout_ms"), **inputs))}
        if cmd == "get_result":
            handle = self.model({"model_id": args["model_id"]})
            result = handle.get_result(timeout_ms=args.get("timeout_ms", 0))
            return {"reply": None if result is None else reply_json(result)}
        if cmd == "server_info":
            assert self.conn is not None
            info = self.conn.server_info(timeout_ms=args.get("timeout_ms", 1000))
            limits = dataclasses.asdict(info.limits)
            return {"info": {"protocol_version": info.protocol_version, "server": info.server, "limits": limits}}
        if cmd == "stats":
            assert self.conn is not None
            s = self.conn.stats
            return {
                "stats": {
                    "sent": s.sent,
                    "send_failed": s.send_failed,
                    "received": s.received,
                    "stale": s.stale_dropped,
                    "unknown": s.unknown_dropped,
                    "malformed": s.malformed_dropped,
                    "socket_resets": s.socket_resets,
                    "by_status": dict(s.by_status),
                }
            }
        if cmd == "socket_options":
            assert self.conn is not None
            sock = self.conn._socket
            names = {
                "reconnect_ivl": zmq.RECONNECT_IVL, "reconnect_ivl_max": zmq.RECONNECT_IVL_MAX,
                "heartbeat_ivl": zmq.HEARTBEAT_IVL, "heartbeat_timeout": zmq.HEARTBEAT_TIMEOUT,
                "tcp_keepalive": zmq.TCP_KEEPALIVE, "tcp_keepalive_idle": zmq.TCP_KEEPALIVE_IDLE,
                "tcp_keepalive_intvl": zmq.TCP_KEEPALIVE_INTVL, "tcp_keepalive_cnt": zmq.TCP_KEEPALIVE_CNT,
                "tcp_maxrt": zmq.TCP_MAXRT,
                "immediate": zmq.IMMEDIATE, "sndtimeo": zmq.SNDTIMEO, "sndhwm": zmq.SNDHWM,
                "rcvhwm": zmq.RCVHWM, "linger": zmq.LINGER, "maxmsgsize": zmq.MAXMSGSIZE,
            }  # fmt: skip
            out: dict[str, Any] = {name: sock.getsockopt(opt) for name, opt in names.items()}
            out["routing_id"] = sock.getsockopt(zmq.ROUTING_ID).hex()
            return {"options": out}
        if cmd == "close":
            if self.conn is not None:
                self.conn.close()
            self.models.clear()
            return {}
        if cmd == "encode":
            model = args["model"]
            inputs = observation_inputs(args)
            hints = ObservationHints.take(inputs)
            frames = _envelope.encode_observation(
                client_id=args["client_id"],
                client_type=args.get("client_type", ""),
                model_id=model["model_id"],
                request_id=int(args["request_id"]),
                inputs=inputs,
                hints=hints,
                latency_budget_ms=float(model.get("latency_budget_ms", 50.0)),
                default_priority=int(model.get("priority", 1)),
                timestamp_ns=int(args["timestamp_ns"]),
                limits=DEFAULT_LIMITS,
                single_payload_frame=bool(args.get("single_payload_frame")),
            )
            return {"frames": [bytes(memoryview(f)).hex() for f in frames]}
        if cmd == "decode":
            frames = [bytes.fromhex(f) for f in args["frames"]]
            try:
                result = _envelope.decode_reply(frames, DEFAULT_LIMITS)
            except inferential.WireError as exc:
                rid = "0"
                try:
                    resp, _ = _envelope.parse_reply(frames, DEFAULT_LIMITS)
                    rid = str(resp.request_id)
                except inferential.WireError:
                    pass
                return {"malformed": {"message": str(exc), "request_id": rid}}
            return {"reply": reply_json(result)}
        if cmd == "error_for":
            status = args["status"]
            value = pb.Status.Value(status) if isinstance(status, str) and not status.isdigit() else int(status)
            if value in (pb.OK, pb.STATUS_UNSPECIFIED):
                return {"error": None}
            cls = error_for_status(value)
            exc = cls(
                status=value,
                request_id=int(args.get("request_id", 0)),
                model_id=args.get("model_id", "m"),
                message=args.get("error", ""),
                retryable=bool(args.get("retryable", False)),
            )
            return {"error": error_json(exc)}
        if cmd == "chunk_queue":
            clock = [int(args.get("now_ns", "0"))]
            queue = ActionChunkQueue(
                args["blend"],
                new_weight=float(args.get("new_weight", 0.7)),
                start_step=int(args.get("start_step", 0)),
                clock=lambda: clock[0],
            )
            results: list[Any] = []
            for op in args["ops"]:
                (name, body), = op.items()
                if name == "add":
                    until = body.get("valid_until_ns")
                    rows = np.asarray(body["rows"], dtype=np.float64)
                    results.append(queue.add(rows, int(body["start_step"]), None if until is None else int(until)))
                elif name == "pop":
                    action = queue.pop()
                    results.append(None if action is None else [float(x) for x in np.ravel(action)])
                elif name == "remaining":
                    results.append(queue.actions_remaining())
                elif name == "peek":
                    peeked = queue.peek(body.get("limit"))
                    results.append(None if peeked is None else [[float(x) for x in np.ravel(r)] for r in peeked])
                elif name == "now_ns":
                    clock[0] = int(body)
                    results.append(None)
            st = queue.stats
            stats = {"executed": st.executed, "underruns": st.underruns, "held": st.held, "merged": st.merged, "late": st.late}
            return {"results": results, "stats": stats}
        return {"__error__": {"kind": "unsupported", "message": f"unknown command {cmd!r}"}}


def main() -> None:
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            command = json.loads(line)
            result = worker.handle(command.pop("cmd"), command)
            answer = {"ok": False, "error": result["__error__"]} if "__error__" in result else {"ok": True, **result}
        except BaseException as exc:  # every failure is an answer; the loop never dies
            answer = {"ok": False, "error": error_json(exc)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

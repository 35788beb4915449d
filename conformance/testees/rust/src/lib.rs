//! The conformance testee of the Rust client (conformance/TESTEE.md): `handle(line)` parses
//! one command, runs it against the `inferential` crate's public API and returns the answer
//! line. State (one connection at most) lives between calls. Nothing escapes `handle`: an
//! error is an answer, a panic becomes `testee_bug`.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use inferential::chunks::{ActionChunkQueue, Blend};
use inferential::codec::{decode_reply, encode_observation, EncodeParams};
use inferential::{
    Connection, DType, Error, ErrorKind, Limits, Model, Observation, Reply, RequestId, Status,
};
use pyo3::prelude::*;
use serde_json::{json, Value};

static CONNECTION: Mutex<Option<Connection>> = Mutex::new(None);

/// A failed command: an `ERROR` object of the protocol.
struct Fail(Value);

type Answer = Result<Value, Fail>;

fn fail(kind: &str, message: impl Into<String>) -> Fail {
    Fail(json!({"kind": kind, "message": message.into()}))
}

fn bad(message: impl Into<String>) -> Fail {
    fail("invalid_argument", message)
}

fn is_status_kind(kind: ErrorKind) -> bool {
    !matches!(
        kind,
        ErrorKind::Timeout
            | ErrorKind::ServerUnavailable
            | ErrorKind::Protocol
            | ErrorKind::InvalidArgument
            | ErrorKind::Closed
            | ErrorKind::Transport
            | ErrorKind::Unsupported
    )
}

fn error_json(err: &Error) -> Value {
    let kind = match err.kind() {
        // Not a kind of the protocol: a ZeroMQ failure is the testee's problem to report.
        ErrorKind::Transport => "testee_bug",
        other => other.as_str(),
    };
    let mut out = json!({"kind": kind, "message": err.to_string()});
    if is_status_kind(err.kind()) {
        out["message"] = json!(err.message());
        out["status"] = json!(err.status().map(|s| s.name()).unwrap_or_default());
        out["retryable"] = json!(err.retryable());
        out["retry_after_ms"] = json!(err.retry_after_ms());
        out["request_id"] = json!(err.request_id().map(|r| r.get()).unwrap_or(0).to_string());
    }
    out
}

impl From<Error> for Fail {
    fn from(err: Error) -> Self {
        Fail(error_json(&err))
    }
}

fn hex_decode(text: &str) -> Result<Vec<u8>, Fail> {
    if text.len() % 2 != 0 {
        return Err(bad("odd-length hex"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("bad hex at {i}")))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn field<'v>(args: &'v Value, name: &str) -> Option<&'v Value> {
    args.get(name).filter(|v| !v.is_null())
}

fn uint(args: &Value, name: &str) -> Result<Option<u64>, Fail> {
    match field(args, name) {
        None => Ok(None),
        Some(Value::String(s)) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| bad(format!("{name}: not an unsigned integer: {s:?}"))),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("{name}: not an unsigned integer: {v}"))),
    }
}

fn u32_of(args: &Value, name: &str) -> Result<Option<u32>, Fail> {
    uint(args, name)?
        .map(|v| u32::try_from(v).map_err(|_| bad(format!("{name}: {v} does not fit 32 bits"))))
        .transpose()
}

fn float(args: &Value, name: &str) -> Result<Option<f32>, Fail> {
    match field(args, name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|f| Some(f as f32))
            .ok_or_else(|| bad(format!("{name}: not a number: {v}"))),
    }
}

fn text<'v>(args: &'v Value, name: &str) -> Result<Option<&'v str>, Fail> {
    match field(args, name) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| bad(format!("{name}: not a string"))),
    }
}

/// The observation of an `observe`/`request`/`encode` command.
fn observation(args: &Value) -> Result<Observation<'static>, Fail> {
    let mut obs = Observation::new();
    if let Some(tensors) = field(args, "tensors") {
        for t in tensors
            .as_array()
            .ok_or_else(|| bad("tensors: not a list"))?
        {
            let key = text(t, "key")?.unwrap_or("");
            let name = text(t, "dtype")?.unwrap_or("");
            let dtype =
                DType::from_name(name).ok_or_else(|| bad(format!("unknown dtype {name:?}")))?;
            let mut shape = Vec::new();
            for d in field(t, "shape")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let d = d
                    .as_u64()
                    .ok_or_else(|| bad(format!("tensor '{key}': bad dimension {d}")))?;
                shape.push(usize::try_from(d).map_err(|_| bad("dimension too large"))?);
            }
            let data = hex_decode(text(t, "data")?.unwrap_or(""))?;
            obs = obs.tensor_owned(key, dtype, data, &shape);
        }
    }
    if let Some(meta) = field(args, "metadata") {
        for (k, v) in meta
            .as_object()
            .ok_or_else(|| bad("metadata: not an object"))?
        {
            obs = obs.metadata(
                k,
                v.as_str()
                    .ok_or_else(|| bad("metadata values are strings"))?,
            );
        }
    }
    if let Some(u) = float(args, "urgency")? {
        obs = obs.urgency(u);
    }
    if let Some(s) = u32_of(args, "steps_remaining")? {
        obs = obs.steps_remaining(s);
    }
    if let Some(step) = uint(args, "control_step")? {
        obs = obs.control_step(step);
    }
    Ok(obs)
}

fn model_spec(args: &Value) -> Result<&Value, Fail> {
    field(args, "model").ok_or_else(|| bad("missing model"))
}

fn model(conn: &Connection, spec: &Value) -> Result<Model, Fail> {
    let id = text(spec, "model_id")?.unwrap_or("");
    let mut model = conn.model(id)?;
    if let Some(v) = float(spec, "latency_budget_ms")? {
        model = model.latency_budget_ms(v);
    }
    if let Some(v) = u32_of(spec, "priority")? {
        model = model.priority(v);
    }
    if let Some(v) = uint(spec, "deadline_ns")?.filter(|&v| v != 0) {
        model = model.deadline_ns(v);
    }
    if let Some(v) = u32_of(spec, "actions_remaining")? {
        model = model.actions_remaining(v);
    }
    if let Some(v) = float(spec, "control_rate_hz")?.filter(|&v| v != 0.0) {
        model = model.control_rate_hz(v);
    }
    Ok(model)
}

fn reply_json(reply: &Reply) -> Value {
    let tensors: Vec<Value> = reply
        .tensors()
        .iter()
        .map(|t| {
            json!({"key": t.key(), "dtype": t.dtype().name(), "shape": t.shape(),
                   "data": hex(t.bytes()), "aligned": t.is_aligned()})
        })
        .collect();
    let timing = reply.timing().map(|t| {
        json!({"queue_wait_ms": t.queue_wait_ms, "inference_ms": t.inference_ms,
               "total_ms": t.total_ms, "batch_size": t.batch_size})
    });
    json!({
        "status": reply.status().name(), "request_id": reply.request_id().get().to_string(),
        "model_id": reply.model_id(), "client_id": reply.client_id(),
        "protocol_version": reply.protocol_version(), "retryable": reply.retryable(),
        "error": reply.error(), "retry_after_ms": reply.retry_after_ms(), "timing": timing,
        "tensors": tensors, "metadata": reply.metadata(),
        "first_action_step": reply.first_action_step().map(|s| s.to_string()),
        "action_period_ms": reply.action_period_ms(),
        "predicted_delay_steps": reply.predicted_delay_steps(),
        "actual_delay_steps": reply.actual_delay_steps(),
        "valid_until_ns": reply.valid_until_ns().map(|v| v.to_string()),
    })
}

fn timeout(args: &Value) -> Result<Duration, Fail> {
    let ms = field(args, "timeout_ms")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    if !(ms.is_finite() && ms >= 0.0) {
        return Err(bad(format!("timeout_ms: {ms}")));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

fn current() -> Result<Connection, Fail> {
    let guard = CONNECTION.lock().unwrap_or_else(|p| p.into_inner());
    guard.clone().ok_or_else(|| fail("closed", "not connected"))
}

fn connect(args: &Value) -> Answer {
    let endpoint = text(args, "endpoint")?.ok_or_else(|| bad("missing endpoint"))?;
    let empty = json!({});
    let o = field(args, "options").unwrap_or(&empty);
    let mut b = Connection::builder(endpoint);
    if let Some(v) = text(o, "client_id")? {
        b = b.client_id(v);
    }
    if let Some(v) = text(o, "client_type")? {
        b = b.client_type(v);
    }
    if let Some(v) = text(o, "auth_token")? {
        b = b.auth_token(v);
    }
    if let Some(v) = text(o, "curve_server_key")? {
        b = b.curve_server_key(v);
    }
    if let Some(v) = text(o, "curve_public_key")? {
        b = b.curve_public_key(v);
    }
    if let Some(v) = text(o, "curve_secret_key")? {
        b = b.curve_secret_key(v);
    }
    if let Some(v) = field(o, "single_payload_frame") {
        b = b.single_payload_frame(
            v.as_bool()
                .ok_or_else(|| bad("single_payload_frame: not a bool"))?,
        );
    }
    type Setter = fn(inferential::ConnectionBuilder, u32) -> inferential::ConnectionBuilder;
    let setters: [(&str, Setter); 7] = [
        ("reconnect_ivl_ms", |b, v| b.reconnect_ivl_ms(v)),
        ("reconnect_ivl_max_ms", |b, v| b.reconnect_ivl_max_ms(v)),
        ("send_timeout_ms", |b, v| b.send_timeout_ms(v)),
        ("heartbeat_ivl_ms", |b, v| b.heartbeat_ivl_ms(v)),
        ("heartbeat_timeout_ms", |b, v| b.heartbeat_timeout_ms(v)),
        ("send_hwm", |b, v| b.send_hwm(v)),
        ("recv_hwm", |b, v| b.recv_hwm(v)),
    ];
    for (name, set) in setters {
        if let Some(v) = u32_of(o, name)? {
            b = set(b, v);
        }
    }
    if let Some(v) = uint(o, "max_message_bytes")? {
        let max_message_bytes =
            usize::try_from(v).map_err(|_| bad("max_message_bytes: out of range"))?;
        b = b.limits(Limits {
            max_message_bytes,
            ..Limits::default()
        });
    }
    let conn = b.connect()?;
    let mut guard = CONNECTION.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(old) = guard.replace(conn) {
        old.close();
    }
    Ok(json!({}))
}

fn stats() -> Answer {
    let s = current()?.stats();
    Ok(
        json!({"stats": {"sent": s.sent, "send_failed": s.send_failed, "received": s.received,
        "stale": s.stale_dropped, "unknown": s.unknown_dropped, "malformed": s.malformed_dropped,
        "socket_resets": s.socket_resets, "by_status": s.by_status}}),
    )
}

fn socket_options() -> Answer {
    let o = current()?.socket_options()?;
    Ok(
        json!({"options": {"reconnect_ivl": o.reconnect_ivl, "reconnect_ivl_max": o.reconnect_ivl_max,
        "heartbeat_ivl": o.heartbeat_ivl, "heartbeat_timeout": o.heartbeat_timeout,
        "tcp_keepalive": o.tcp_keepalive, "tcp_keepalive_idle": o.tcp_keepalive_idle,
        "tcp_keepalive_intvl": o.tcp_keepalive_intvl, "tcp_keepalive_cnt": o.tcp_keepalive_cnt,
        "tcp_maxrt": o.tcp_maxrt,
        "immediate": o.immediate, "sndtimeo": o.sndtimeo, "sndhwm": o.sndhwm, "rcvhwm": o.rcvhwm,
        "linger": o.linger, "maxmsgsize": o.maxmsgsize, "routing_id": hex(&o.routing_id)}}),
    )
}

fn encode(args: &Value) -> Answer {
    let spec = model_spec(args)?;
    let obs = observation(args)?;
    let deadline = uint(spec, "deadline_ns")?.filter(|&v| v != 0);
    let params = EncodeParams {
        client_id: text(args, "client_id")?.unwrap_or("r1"),
        client_type: text(args, "client_type")?.unwrap_or(""),
        model_id: text(spec, "model_id")?.unwrap_or(""),
        request_id: uint(args, "request_id")?.unwrap_or(1),
        timestamp_ns: uint(args, "timestamp_ns")?.unwrap_or(0),
        // The model handle's defaults (Connection::model): 50 ms, priority 1.
        latency_budget_ms: float(spec, "latency_budget_ms")?.unwrap_or(50.0),
        priority: u32_of(spec, "priority")?.unwrap_or(1),
        deadline_ns: deadline,
        actions_remaining: u32_of(spec, "actions_remaining")?,
        control_rate_hz: float(spec, "control_rate_hz")?.filter(|&v| v != 0.0),
        auth_token: text(args, "auth_token")?.unwrap_or(""),
        single_payload_frame: field(args, "single_payload_frame")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        limits: Limits::default(),
    };
    let frames = encode_observation(&params, &obs)?;
    Ok(json!({"frames": frames.iter().map(|f| hex(f)).collect::<Vec<_>>()}))
}

fn decode(args: &Value) -> Answer {
    let mut frames = Vec::new();
    for f in field(args, "frames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        frames.push(Bytes::from(hex_decode(
            f.as_str().ok_or_else(|| bad("frames are hex strings"))?,
        )?));
    }
    match decode_reply(&frames, &Limits::default()) {
        Ok(reply) => Ok(json!({"reply": reply_json(&reply)})),
        Err(m) => {
            Ok(json!({"malformed": {"message": m.message, "request_id": m.request_id.to_string()}}))
        }
    }
}

fn error_for(args: &Value) -> Answer {
    let status = match field(args, "status") {
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .map(Status::from_code),
        Some(Value::String(s)) => Status::from_name(s),
        _ => None,
    }
    .ok_or_else(|| bad("status: a name or a number"))?;
    let v2 = field(args, "protocol_version")
        .and_then(Value::as_u64)
        .unwrap_or(2)
        >= 2;
    let retryable = if v2 {
        field(args, "retryable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    } else {
        status.table_retryable().unwrap_or(false)
    };
    let message = text(args, "error")?.unwrap_or("");
    let rid = RequestId(uint(args, "request_id")?.unwrap_or(0));
    let model_id = text(args, "model_id")?.unwrap_or("");
    Ok(
        match Error::from_status(status, message, retryable, rid, model_id) {
            Some(err) => json!({"error": error_json(&err)}),
            None => json!({"error": null}),
        },
    )
}

/// `chunk_queue`: the ops on an ActionChunkQueue with a fake clock.
fn chunk_queue(args: &Value) -> Answer {
    let blend = match text(args, "blend")?.unwrap_or("latest") {
        "latest" => Blend::Latest,
        "average" => Blend::Average,
        "exponential" => Blend::Exponential(
            field(args, "new_weight")
                .and_then(Value::as_f64)
                .unwrap_or(0.7),
        ),
        other => return Err(bad(format!("unknown blend {other:?}"))),
    };
    let now = Arc::new(AtomicU64::new(uint(args, "now_ns")?.unwrap_or(0)));
    let clock = Arc::clone(&now);
    let mut queue = ActionChunkQueue::with_clock(
        blend,
        uint(args, "start_step")?.unwrap_or(0),
        Box::new(move || clock.load(Ordering::Relaxed)),
    )?;
    let mut results = Vec::new();
    for op in field(args, "ops")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let result = if let Some(add) = field(op, "add") {
            let mut values = Vec::new();
            let mut row_len = 0;
            for row in field(add, "rows")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let row = row.as_array().ok_or_else(|| bad("rows are lists"))?;
                row_len = row.len();
                for v in row {
                    values.push(v.as_f64().ok_or_else(|| bad("row values are numbers"))?);
                }
            }
            let start = uint(add, "start_step")?.unwrap_or(0);
            json!(queue.add(&values, row_len.max(1), start, uint(add, "valid_until_ns")?)?)
        } else if field(op, "pop").is_some() {
            json!(queue.pop())
        } else if let Some(peek) = op.get("peek") {
            let limit = match field(peek, "limit") {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|l| usize::try_from(l).ok())
                        .ok_or_else(|| bad(format!("peek limit: {v}")))?,
                ),
            };
            json!(queue.peek(limit))
        } else if field(op, "remaining").is_some() {
            json!(queue.actions_remaining())
        } else if let Some(t) = uint(op, "now_ns")? {
            now.store(t, Ordering::Relaxed);
            Value::Null
        } else {
            return Err(bad(format!("unknown op {op}")));
        };
        results.push(result);
    }
    let s = queue.stats();
    Ok(
        json!({"results": results, "stats": {"executed": s.executed, "underruns": s.underruns,
        "held": s.held, "merged": s.merged, "late": s.late}}),
    )
}

fn dispatch(cmd: &Value) -> Answer {
    let name = text(cmd, "cmd")?.unwrap_or("");
    match name {
        "hello" => Ok(json!({"language": "rust", "client_version": inferential::VERSION})),
        "connect" => connect(cmd),
        "observe" => {
            let conn = current()?;
            let rid = model(&conn, model_spec(cmd)?)?.observe(&observation(cmd)?)?;
            Ok(json!({"request_id": rid.get().to_string()}))
        }
        "get_result" => {
            let conn = current()?;
            let id = text(cmd, "model_id")?.unwrap_or("");
            let got = conn.model(id)?.get_result(timeout(cmd)?)?;
            Ok(json!({"reply": got.as_ref().map(reply_json)}))
        }
        "request" => {
            let conn = current()?;
            let m = model(&conn, model_spec(cmd)?)?;
            let reply = m.request(&observation(cmd)?, timeout(cmd)?)?;
            Ok(json!({"reply": reply_json(&reply)}))
        }
        "server_info" => {
            let info = current()?.server_info(timeout(cmd)?)?;
            let l = info.limits;
            Ok(
                json!({"info": {"protocol_version": info.protocol_version, "server": info.server,
                "limits": {"max_message_bytes": l.max_message_bytes,
                    "max_payload_frames": l.max_payload_frames, "max_tensors": l.max_tensors,
                    "max_dims": l.max_dims, "max_key_bytes": l.max_key_bytes,
                    "max_metadata_entries": l.max_metadata_entries,
                    "max_metadata_value_bytes": l.max_metadata_value_bytes,
                    "max_id_bytes": l.max_id_bytes,
                    "max_auth_token_bytes": l.max_auth_token_bytes}}}),
            )
        }
        "stats" => stats(),
        "socket_options" => socket_options(),
        "close" => {
            let mut guard = CONNECTION.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(conn) = guard.take() {
                conn.close();
            }
            Ok(json!({}))
        }
        "encode" => encode(cmd),
        "decode" => decode(cmd),
        "error_for" => error_for(cmd),
        "chunk_queue" => chunk_queue(cmd),
        other => Err(fail("unsupported", format!("command {other:?}"))),
    }
}

fn answer(line: &str) -> Value {
    let result = match serde_json::from_str::<Value>(line) {
        Ok(cmd) => dispatch(&cmd),
        Err(err) => Err(fail("testee_bug", format!("not JSON: {err}"))),
    };
    match result {
        Ok(Value::Object(mut map)) => {
            map.insert("ok".into(), json!(true));
            Value::Object(map)
        }
        Ok(other) => json!({"ok": true, "value": other}),
        Err(Fail(error)) => json!({"ok": false, "error": error}),
    }
}

/// One command line in, one answer line out (conformance/TESTEE.md).
#[pyfunction]
fn handle(line: &str) -> String {
    let out = catch_unwind(AssertUnwindSafe(|| answer(line))).unwrap_or_else(
        |_| json!({"ok": false, "error": {"kind": "testee_bug", "message": "panic in the testee"}}),
    );
    out.to_string()
}

#[pymodule]
fn inferential_testee_rust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(handle, m)?)
}

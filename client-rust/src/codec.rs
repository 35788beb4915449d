//! The codec, apart from any I/O: an observation to the frames a DEALER sends, and the
//! frames a DEALER receives to a reply, with every check of the protocol (§2, §4, §7).
//! Pure functions over bytes: the connection, the tests, the fuzzer and the conformance
//! testee all use these.
use std::borrow::Cow;
use std::collections::BTreeSet;

use bytes::Bytes;
use prost::Message as _;

use crate::error::{Error, Result};
use crate::pb;
use crate::reply::{ChunkInfo, Reply, Tensor, Timing};
use crate::wire::dtype::DType;
use crate::wire::limits::Limits;
use crate::wire::status::Status;
use crate::wire::tensor::Observation;
use crate::{RequestId, PROTOCOL_VERSION};

/// Tensors of at most this many bytes are joined into one frame; larger ones are a frame
/// of their own (a frame costs more than copying a few hundred bytes). Same as Python.
pub const SMALL_TENSOR_BYTES: usize = 2048;

/// The payload of a message and its tensor descriptors, in the order given: small tensors
/// joined into one frame (each padded to its item size), larger ones a frame of their own,
/// so the logical payload is in descriptor order too. `single_frame`: everything in one
/// frame, present even when empty (what a 1.x peer reads). Shared by observations and a
/// server's replies ([`crate::wire::server::encode_reply`]).
pub(crate) fn lay_out_payload<'a, 's>(
    tensors: impl Iterator<Item = (&'s str, DType, &'s [usize], &'a [u8])>,
    single_frame: bool,
    timestamp_ns: u64,
) -> (Vec<pb::Tensor>, Vec<Cow<'a, [u8]>>) {
    let mut descriptors = Vec::new();
    let mut payload: Vec<Cow<'a, [u8]>> = Vec::new();
    let mut small: Vec<u8> = Vec::new();
    let mut frame_start: u64 = 0; // logical offset of the frame being built (`small`)
    for (key, dtype, shape, bytes) in tensors {
        let item = dtype.item_size();
        let own_frame = !single_frame && bytes.len() > SMALL_TENSOR_BYTES;
        let offset = if own_frame {
            if !small.is_empty() {
                frame_start += small.len() as u64;
                payload.push(Cow::Owned(std::mem::take(&mut small)));
            }
            let at = frame_start;
            frame_start += bytes.len() as u64;
            payload.push(Cow::Borrowed(bytes));
            at
        } else {
            let pad = (item - small.len() % item) % item;
            small.resize(small.len() + pad, 0);
            let at = frame_start + small.len() as u64;
            small.extend_from_slice(bytes);
            at
        };
        descriptors.push(pb::Tensor {
            key: key.to_owned(),
            dtype: dtype.code(),
            shape: shape.iter().map(|&d| d as i64).collect(),
            byte_offset: offset,
            byte_length: bytes.len() as u64,
            timestamp_ns,
            encoding: pb::Encoding::Raw as i32,
        });
    }
    if !small.is_empty() || (single_frame && payload.is_empty()) {
        payload.push(Cow::Owned(small));
    }
    (descriptors, payload)
}

/// Envelope fields of one observation that do not come from the [`Observation`] itself:
/// who sends it, to which model, and the model handle's defaults (the observation's own
/// priority, deadline, actions remaining and control rate win over these).
#[derive(Debug, Clone)]
pub struct EncodeParams<'p> {
    /// `client.id` (non-empty).
    pub client_id: &'p str,
    /// `client.type`.
    pub client_type: &'p str,
    /// The model to run (non-empty).
    pub model_id: &'p str,
    /// The request id (v2: >= 1).
    pub request_id: u64,
    /// When the sensors were read, Unix epoch ns.
    pub timestamp_ns: u64,
    /// Answer wanted within this long after arrival; 0 = server default.
    pub latency_budget_ms: f32,
    /// 0 is highest.
    pub priority: u32,
    /// Absolute deadline, Unix epoch ns.
    pub deadline_ns: Option<u64>,
    /// Actions left in the robot's queue.
    pub actions_remaining: Option<u32>,
    /// Rate at which the robot consumes actions.
    pub control_rate_hz: Option<f32>,
    /// Shared secret ("" = none).
    pub auth_token: &'p str,
    /// Join every tensor into exactly one payload frame (1.x servers read only one).
    pub single_payload_frame: bool,
    /// The bounds to check.
    pub limits: Limits,
}

fn check_text(what: &str, text: &str, max: usize, non_empty: bool) -> Result<()> {
    if non_empty && text.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if text.len() > max {
        return Err(Error::invalid(format!(
            "{what} is {} bytes, limit is {max}",
            text.len()
        )));
    }
    Ok(())
}

fn check_rate(what: &str, value: f32) -> Result<f32> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(Error::invalid(format!(
            "{what} must be finite and >= 0, got {value}"
        )))
    }
}

/// The frames `["", envelope, payload...]` a DEALER sends for `obs`. Large tensors are
/// borrowed, not copied. Each tensor starts at a byte offset that is a multiple of its
/// item size within its frame (zero padding between tensors). Every limit is checked:
/// a violation is an `invalid_argument` error and nothing is produced.
pub fn encode_observation<'a>(
    params: &EncodeParams<'_>,
    obs: &'a Observation<'_>,
) -> Result<Vec<Cow<'a, [u8]>>> {
    let limits = &params.limits;
    if let Some(problem) = &obs.invalid {
        return Err(Error::invalid(problem.clone()));
    }
    check_text("client_id", params.client_id, limits.max_key_bytes, true)?;
    check_text(
        "client_type",
        params.client_type,
        limits.max_key_bytes,
        false,
    )?;
    check_text("model_id", params.model_id, limits.max_key_bytes, true)?;
    check_text(
        "auth_token",
        params.auth_token,
        limits.max_auth_token_bytes,
        false,
    )?;
    if obs.tensors.len() > limits.max_tensors {
        return Err(Error::invalid(format!(
            "{} tensors, limit is {}",
            obs.tensors.len(),
            limits.max_tensors
        )));
    }
    if obs.metadata.len() > limits.max_metadata_entries {
        return Err(Error::invalid(format!(
            "{} metadata entries, limit is {}",
            obs.metadata.len(),
            limits.max_metadata_entries
        )));
    }
    for (key, value) in &obs.metadata {
        check_text("metadata key", key, limits.max_key_bytes, true)?;
        check_text(
            &format!("metadata '{key}' value"),
            value,
            limits.max_metadata_value_bytes,
            false,
        )?;
    }
    let mut keys = BTreeSet::new();
    for t in &obs.tensors {
        check_text("tensor key", &t.key, limits.max_key_bytes, true)?;
        if !keys.insert(t.key.as_str()) {
            return Err(Error::invalid(format!("duplicate tensor key '{}'", t.key)));
        }
        if obs.metadata.contains_key(&t.key) {
            return Err(Error::invalid(format!(
                "'{}' is both a tensor key and a metadata key",
                t.key
            )));
        }
        if t.shape.len() > limits.max_dims {
            return Err(Error::invalid(format!(
                "tensor '{}': {} dimensions, limit is {}",
                t.key,
                t.shape.len(),
                limits.max_dims
            )));
        }
    }

    let mut envelope = pb::Observation {
        client: Some(pb::Client {
            id: params.client_id.to_owned(),
            r#type: params.client_type.to_owned(),
        }),
        timestamp_ns: params.timestamp_ns,
        urgency: check_rate("urgency", obs.urgency)?,
        model_id: params.model_id.to_owned(),
        steps_remaining: obs.steps_remaining,
        metadata: obs.metadata.clone(),
        priority: obs.priority.unwrap_or(params.priority),
        request_id: params.request_id,
        protocol_version: PROTOCOL_VERSION,
        latency_budget_ms: check_rate("latency_budget_ms", params.latency_budget_ms)?,
        deadline_ns: obs.deadline_ns.or(params.deadline_ns).unwrap_or(0),
        actions_remaining: obs.actions_remaining.or(params.actions_remaining),
        control_rate_hz: check_rate(
            "control_rate_hz",
            obs.control_rate_hz
                .or(params.control_rate_hz)
                .unwrap_or(0.0),
        )?,
        auth_token: params.auth_token.to_owned(),
        control_step: obs.control_step,
        ..Default::default()
    };

    let (tensors, payload) = lay_out_payload(
        obs.tensors
            .iter()
            .map(|t| (t.key.as_str(), t.dtype, &t.shape[..], &t.bytes[..])),
        params.single_payload_frame,
        params.timestamp_ns,
    );
    envelope.tensors = tensors;
    if payload.len() > limits.max_payload_frames {
        return Err(Error::invalid(format!(
            "{} payload frames, limit is {}",
            payload.len(),
            limits.max_payload_frames
        )));
    }
    let envelope = envelope.encode_to_vec();
    let size = payload
        .iter()
        .fold(envelope.len(), |acc, f| acc.saturating_add(f.len()));
    if size > limits.max_message_bytes {
        return Err(Error::invalid(format!(
            "observation is {size} bytes, limit is {}",
            limits.max_message_bytes
        )));
    }
    let mut frames = Vec::with_capacity(payload.len() + 2);
    frames.push(Cow::Borrowed(&[][..]));
    frames.push(Cow::Owned(envelope));
    frames.extend(payload);
    Ok(frames)
}

/// The metadata key that marks a describe request (protocol §12).
pub const DESCRIBE_KEY: &str = "inferential.describe";

/// The frames of a describe request (protocol §12): no model, no tensors, the
/// [`DESCRIBE_KEY`] metadata entry; `params.model_id` and the per-model hints are ignored.
pub fn encode_describe(params: &EncodeParams<'_>) -> Result<Vec<Vec<u8>>> {
    let limits = &params.limits;
    check_text("client_id", params.client_id, limits.max_id_bytes, true)?;
    check_text(
        "client_type",
        params.client_type,
        limits.max_id_bytes,
        false,
    )?;
    check_text(
        "auth_token",
        params.auth_token,
        limits.max_auth_token_bytes,
        false,
    )?;
    let envelope = pb::Observation {
        client: Some(pb::Client {
            id: params.client_id.to_owned(),
            r#type: params.client_type.to_owned(),
        }),
        timestamp_ns: params.timestamp_ns,
        metadata: [(DESCRIBE_KEY.to_owned(), "1".to_owned())].into(),
        request_id: params.request_id,
        protocol_version: PROTOCOL_VERSION,
        auth_token: params.auth_token.to_owned(),
        ..Default::default()
    };
    Ok(vec![Vec::new(), envelope.encode_to_vec()])
}

/// A reply that breaks the protocol: the client counts it malformed and drops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// Which rule it breaks.
    pub message: String,
    /// The envelope's request id; 0 when the envelope did not parse.
    pub request_id: u64,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed reply: {}", self.message)
    }
}

impl std::error::Error for Malformed {}

fn malformed(request_id: u64, message: impl Into<String>) -> Malformed {
    Malformed {
        message: message.into(),
        request_id,
    }
}

/// The envelope of `["", envelope, payload...]` (as a DEALER receives it) and its
/// payload frames; checks the framing and the size only, so a matched request can be
/// failed with the details when the rest is malformed.
pub(crate) fn parse_reply<'f>(
    frames: &'f [Bytes],
    limits: &Limits,
) -> Result<(pb::ModelResponse, &'f [Bytes]), Malformed> {
    let [delimiter, envelope, payload @ ..] = frames else {
        return Err(malformed(
            0,
            format!(
                "expected [\"\", envelope, payload...], got {} frame(s)",
                frames.len()
            ),
        ));
    };
    if !delimiter.is_empty() {
        return Err(malformed(0, "the first frame must be the empty delimiter"));
    }
    let total = frames
        .iter()
        .fold(0usize, |acc, f| acc.saturating_add(f.len()));
    if total > limits.max_message_bytes {
        return Err(malformed(
            0,
            format!("{total} bytes, limit is {}", limits.max_message_bytes),
        ));
    }
    let resp = pb::ModelResponse::decode(envelope.clone())
        .map_err(|err| malformed(0, format!("envelope: not a valid ModelResponse: {err}")))?;
    Ok((resp, payload))
}

/// A [`Reply`] over `payload`, after checking every descriptor, metadata entry and limit.
pub(crate) fn build_reply(
    resp: pb::ModelResponse,
    payload: &[Bytes],
    limits: &Limits,
) -> Result<Reply, Malformed> {
    let rid = resp.request_id;
    let bad = |m: String| malformed(rid, m);
    if payload.len() > limits.max_payload_frames {
        return Err(bad(format!(
            "{} payload frames, limit is {}",
            payload.len(),
            limits.max_payload_frames
        )));
    }
    if resp.tensors.len() > limits.max_tensors {
        return Err(bad(format!(
            "{} tensors, limit is {}",
            resp.tensors.len(),
            limits.max_tensors
        )));
    }
    if resp.metadata.len() > limits.max_metadata_entries {
        return Err(bad(format!(
            "{} metadata entries, limit is {}",
            resp.metadata.len(),
            limits.max_metadata_entries
        )));
    }
    for (key, value) in &resp.metadata {
        if key.is_empty() || key.len() > limits.max_key_bytes {
            return Err(bad(format!(
                "metadata key of {} bytes (must be 1..={})",
                key.len(),
                limits.max_key_bytes
            )));
        }
        if value.len() > limits.max_metadata_value_bytes {
            return Err(bad(format!(
                "metadata '{key}': value longer than {} bytes",
                limits.max_metadata_value_bytes
            )));
        }
    }
    // Frame bounds in the logical payload (the concatenation of the payload frames).
    let mut bounds = Vec::with_capacity(payload.len());
    let mut end: u64 = 0;
    for f in payload {
        let start = end;
        end = end.saturating_add(f.len() as u64);
        bounds.push((start, end));
    }

    let mut tensors: Vec<Tensor> = Vec::with_capacity(resp.tensors.len());
    let mut seen = BTreeSet::new();
    for (i, t) in resp.tensors.iter().enumerate() {
        let at = |m: String| bad(format!("tensors[{i}] '{}': {m}", t.key));
        if t.key.is_empty() {
            return Err(bad(format!("tensors[{i}]: empty key")));
        }
        if t.key.len() > limits.max_key_bytes {
            return Err(bad(format!(
                "tensors[{i}]: key longer than {} bytes",
                limits.max_key_bytes
            )));
        }
        if !seen.insert(t.key.as_str()) {
            return Err(at("duplicate key".into()));
        }
        if resp.metadata.contains_key(&t.key) {
            return Err(at("also a metadata key".into()));
        }
        let Some(dtype) = DType::from_code(t.dtype) else {
            return Err(at(format!("unknown or unspecified dtype {}", t.dtype)));
        };
        if t.encoding != pb::Encoding::Raw as i32 && t.encoding != 0 {
            return Err(at(format!(
                "encoding {} is not supported; only RAW",
                t.encoding
            )));
        }
        if t.shape.len() > limits.max_dims {
            return Err(at(format!(
                "{} dimensions, limit is {}",
                t.shape.len(),
                limits.max_dims
            )));
        }
        let mut shape = Vec::with_capacity(t.shape.len());
        let mut count: u64 = 1;
        for &d in &t.shape {
            let Ok(d) = u64::try_from(d) else {
                return Err(at(format!("negative dimension in shape {:?}", t.shape)));
            };
            count = count
                .checked_mul(d)
                .ok_or_else(|| at(format!("shape {:?} overflows", t.shape)))?;
            shape.push(usize::try_from(d).map_err(|_| at("dimension too large".into()))?);
        }
        let needed = count
            .checked_mul(dtype.item_size() as u64)
            .ok_or_else(|| at(format!("shape {:?} overflows", t.shape)))?;
        if needed != t.byte_length {
            return Err(at(format!(
                "shape {:?} of {dtype} needs {needed} bytes but byte_length is {}",
                t.shape, t.byte_length
            )));
        }
        let begin = t.byte_offset;
        let stop = begin
            .checked_add(t.byte_length)
            .ok_or_else(|| at("byte_offset + byte_length overflows".into()))?;
        if stop > end {
            return Err(at(format!(
                "bytes [{begin}, {stop}) lie outside the {end}-byte payload"
            )));
        }
        let data = if t.byte_length == 0 {
            // Zero-size: valid with or without a payload frame.
            Bytes::new()
        } else {
            let found = bounds
                .iter()
                .zip(payload)
                .find(|((lo, hi), _)| *lo <= begin && begin < *hi);
            match found {
                Some(((lo, hi), frame)) if stop <= *hi => {
                    let (from, to) = (begin - lo, stop - lo);
                    match (usize::try_from(from), usize::try_from(to)) {
                        (Ok(from), Ok(to)) if to <= frame.len() => frame.slice(from..to),
                        _ => return Err(at("range outside its frame".into())),
                    }
                }
                _ => {
                    return Err(at(format!(
                        "bytes [{begin}, {stop}) span two payload frames"
                    )))
                }
            }
        };
        if dtype == DType::Bool && data.iter().any(|&b| b > 1) {
            return Err(at("BOOL bytes must be 0 or 1".into()));
        }
        tensors.push(Tensor {
            key: t.key.clone(),
            dtype,
            shape,
            data,
        });
    }

    let status = Status::from_code(resp.status);
    let retryable = if resp.protocol_version >= 2 {
        resp.retryable
    } else {
        status.table_retryable().unwrap_or(false)
    };
    Ok(Reply {
        model_id: resp.model_id,
        client_id: resp.client.map(|c| c.id).unwrap_or_default(),
        request_id: RequestId(rid),
        status,
        error: resp.error,
        retryable,
        retry_after_ms: resp.retry_after_ms,
        timing: resp.timing.map(|t| Timing {
            queue_wait_ms: t.queue_wait_ms,
            inference_ms: t.inference_ms,
            total_ms: t.total_ms,
            batch_size: t.batch_size,
        }),
        inference_latency_ms: resp.inference_latency_ms,
        response_id: resp.response_id,
        timestamp_ns: resp.timestamp_ns,
        observation_timestamp_ns: resp.observation_timestamp_ns,
        protocol_version: resp.protocol_version,
        tensors,
        metadata: resp.metadata,
        chunk: chunk_info(
            resp.first_action_step,
            resp.action_period_ms,
            resp.predicted_delay_steps,
            resp.actual_delay_steps,
            resp.valid_until_ns,
        ),
        round_trip: None,
    })
}

/// The action-chunk fields of a reply: all defaults unless it answers a chunked robot
/// (a step echoed, a period or an expiry), so a stray delay figure alone means nothing.
fn chunk_info(
    first_action_step: Option<u64>,
    action_period_ms: f32,
    predicted_delay_steps: f32,
    actual_delay_steps: f32,
    valid_until_ns: u64,
) -> ChunkInfo {
    if first_action_step.is_none() && action_period_ms == 0.0 && valid_until_ns == 0 {
        return ChunkInfo::default();
    }
    ChunkInfo {
        first_action_step,
        action_period_ms,
        predicted_delay_steps,
        actual_delay_steps,
        // 0 on the wire means "no expiry".
        valid_until_ns: (valid_until_ns != 0).then_some(valid_until_ns),
    }
}

/// A reply from the frames a DEALER receives (`["", envelope, payload...]`), or why the
/// client would count it malformed. Never panics, whatever the bytes.
pub fn decode_reply(frames: &[Bytes], limits: &Limits) -> Result<Reply, Malformed> {
    let (resp, payload) = parse_reply(frames, limits)?;
    build_reply(resp, payload, limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{frames, response, tensor};

    fn params(limits: Limits) -> EncodeParams<'static> {
        EncodeParams {
            client_id: "r1",
            client_type: "",
            model_id: "m",
            request_id: 1,
            timestamp_ns: 1_700_000_000_000_000_000,
            latency_budget_ms: 50.0,
            priority: 1,
            deadline_ns: None,
            actions_remaining: None,
            control_rate_hz: None,
            auth_token: "",
            single_payload_frame: false,
            limits,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_worked_example_of_the_spec_encodes_byte_for_byte() {
        let x = [1.0f32, 2.0];
        let obs = Observation::new().tensor("x", &x, &[2]);
        let out = encode_observation(&params(Limits::default()), &obs).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out[0].is_empty());
        // docs/protocol.md §11, line by line.
        let expected = [
            "0a040a027231",
            "108080a8b1e39fe7cb17",
            "22160a017810021a01022808",
            "308080a8b1e39fe7cb173801",
            "2a016d",
            "4001",
            "4801",
            "5002",
            "5d00004842",
        ]
        .concat();
        assert_eq!(hex(&out[1]), expected);
        assert_eq!(hex(&out[2]), "0000803f00000040");
    }

    #[test]
    fn a_describe_request_has_no_model_no_tensors_and_the_describe_key() {
        let frames = encode_describe(&params(Limits::default())).unwrap();
        assert_eq!(frames.len(), 2);
        let env = pb::Observation::decode(&frames[1][..]).unwrap();
        assert_eq!(
            (env.model_id.as_str(), env.request_id, env.protocol_version),
            ("", 1, 2)
        );
        assert_eq!(
            env.metadata.get(DESCRIBE_KEY).map(String::as_str),
            Some("1")
        );
        assert!(env.tensors.is_empty());
    }

    #[test]
    fn small_tensors_share_a_frame_padded_to_their_item_size_and_large_ones_travel_alone() {
        let bytes = [1u8, 2, 3];
        let pair = [1.5f64, 2.5];
        let big = vec![7u16; SMALL_TENSOR_BYTES]; // 4096 bytes: its own frame
        let obs = Observation::new()
            .tensor("u8", &bytes, &[3])
            .tensor("f64", &pair, &[2])
            .tensor("big", &big, &[64, 32])
            .tensor("tail", &bytes, &[3]);
        let out = encode_observation(&params(Limits::default()), &obs).unwrap();
        assert_eq!(out.len(), 5, "delimiter, envelope, small, big, small");
        let env = pb::Observation::decode(&out[1][..]).unwrap();
        let offsets: Vec<u64> = env.tensors.iter().map(|t| t.byte_offset).collect();
        // u8 at 0, f64 padded to 8 within the first frame, big in its own frame, tail after it.
        assert_eq!(offsets, vec![0, 8, 24, 24 + 4096]);
        assert_eq!(&out[2][..3], &bytes);
        assert_eq!(&out[2][3..8], &[0u8; 5]);
        assert_eq!(out[3].len(), 4096);
        for t in &env.tensors {
            assert_eq!(
                t.byte_offset % DType::from_code(t.dtype).unwrap().item_size() as u64,
                0
            );
        }
        // The decoder accepts what the encoder produced (offsets address the frames).
        let decoded = decode_frames_as_reply(&out, &env);
        assert_eq!(
            decoded.tensor("f64").unwrap().try_as::<f64>().unwrap()[..],
            pair
        );
        assert_eq!(
            decoded.tensor("big").unwrap().try_as::<u16>().unwrap()[..],
            big[..]
        );
    }

    fn decode_frames_as_reply(out: &[Cow<'_, [u8]>], env: &pb::Observation) -> Reply {
        let mut resp = response("m", 1, pb::Status::Ok);
        resp.tensors = env.tensors.clone();
        let payload: Vec<&[u8]> = out[2..].iter().map(|f| &f[..]).collect();
        decode_reply(&frames(&resp, &payload), &Limits::default()).unwrap()
    }

    #[test]
    fn single_payload_frame_joins_everything_and_sends_one_frame_even_when_empty() {
        let big = vec![1.0f32; 1024];
        let small = [1u8];
        let mut p = params(Limits::default());
        p.single_payload_frame = true;
        let obs = Observation::new()
            .tensor("s", &small, &[1])
            .tensor("b", &big, &[1024]);
        let out = encode_observation(&p, &obs).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].len(), 4 + 4096, "1 byte, 3 padding, then the floats");
        let empty = Observation::new();
        assert_eq!(encode_observation(&p, &empty).unwrap().len(), 3);
        p.single_payload_frame = false;
        assert_eq!(
            encode_observation(&p, &empty).unwrap().len(),
            2,
            "no tensors, no payload frame"
        );
    }

    #[test]
    fn limits_are_refused_locally_with_invalid_argument() {
        let one = [0u8];
        let cases: Vec<(&str, Observation<'_>, EncodeParams<'_>)> = vec![
            (
                "key",
                Observation::new().tensor("", &one, &[1]),
                params(Limits::default()),
            ),
            (
                "clash",
                Observation::new()
                    .tensor("k", &one, &[1])
                    .metadata("k", "v"),
                params(Limits::default()),
            ),
            (
                "dims",
                Observation::new().tensor("k", &one, &[1; 9]),
                params(Limits::default()),
            ),
            (
                "urgency",
                Observation::new().urgency(f32::NAN),
                params(Limits::default()),
            ),
            (
                "value",
                Observation::new().metadata("k", &"v".repeat(4097)),
                params(Limits::default()),
            ),
            (
                "model",
                Observation::new(),
                EncodeParams {
                    model_id: "",
                    ..params(Limits::default())
                },
            ),
            (
                "size",
                Observation::new().tensor("k", &[0u8; 100], &[100]),
                params(Limits {
                    max_message_bytes: 64,
                    ..Limits::default()
                }),
            ),
            (
                "count",
                Observation::new()
                    .tensor("a", &one, &[1])
                    .tensor("b", &one, &[1]),
                params(Limits {
                    max_tensors: 1,
                    ..Limits::default()
                }),
            ),
        ];
        for (name, obs, p) in cases {
            let err = encode_observation(&p, &obs).map(|_| ()).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::ErrorKind::InvalidArgument,
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn a_reply_decodes_to_slices_of_its_frames() {
        let mut resp = response("m", 7, pb::Status::Ok);
        resp.tensors = vec![tensor("a", 2, &[2], 0, 8), tensor("flag", 8, &[], 8, 1)];
        resp.metadata.insert("k".into(), "v".into());
        let payload = [0u8, 0, 0x80, 0x3f, 0, 0, 0, 0x40, 1];
        let fr = frames(&resp, &[&payload]);
        let reply = decode_reply(&fr, &Limits::default()).unwrap();
        assert_eq!(reply.request_id(), RequestId(7));
        let a = reply.tensor("a").unwrap();
        assert_eq!(a.try_as::<f32>().unwrap()[..], [1.0, 2.0]);
        assert!(a.try_as::<f64>().is_err(), "wrong element type");
        assert_eq!(a.bytes().as_ptr(), fr[2].as_ptr(), "a view, not a copy");
        assert_eq!(
            reply.tensor("flag").unwrap().to_bools().unwrap(),
            vec![true]
        );
        assert_eq!(reply.metadata().get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn an_unaligned_tensor_is_copied_with_the_right_values() {
        let mut resp = response("m", 1, pb::Status::Ok);
        resp.tensors = vec![tensor("x", 3, &[2], 1, 16)];
        let mut payload = vec![0u8];
        payload.extend_from_slice(&1.25f64.to_le_bytes());
        payload.extend_from_slice(&(-3.5f64).to_le_bytes());
        let reply = decode_reply(&frames(&resp, &[&payload]), &Limits::default()).unwrap();
        let x = reply.tensor("x").unwrap();
        assert!(!x.is_aligned());
        let values = x.try_as::<f64>().unwrap();
        assert!(matches!(values, Cow::Owned(_)));
        assert_eq!(values[..], [1.25, -3.5]);
    }

    #[test]
    fn a_zero_size_tensor_is_valid_with_or_without_a_payload_frame() {
        let mut resp = response("m", 1, pb::Status::Ok);
        resp.tensors = vec![tensor("e", 2, &[0, 3], 0, 0)];
        for payload in [&[][..], &[&[][..]][..]] {
            let reply = decode_reply(&frames(&resp, payload), &Limits::default()).unwrap();
            assert!(reply.tensor("e").unwrap().is_empty());
        }
    }

    #[test]
    fn every_broken_rule_is_malformed_and_carries_the_request_id() {
        let ok = |t: Vec<pb::Tensor>| {
            let mut r = response("m", 9, pb::Status::Ok);
            r.tensors = t;
            r
        };
        let payload = [0u8; 16];
        let cases: Vec<(&str, pb::ModelResponse, Vec<&[u8]>)> = vec![
            (
                "dtype",
                ok(vec![tensor("a", 0, &[1], 0, 4)]),
                vec![&payload],
            ),
            (
                "unknown dtype",
                ok(vec![tensor("a", 99, &[1], 0, 4)]),
                vec![&payload],
            ),
            (
                "negative",
                ok(vec![tensor("a", 5, &[-1], 0, 0)]),
                vec![&payload],
            ),
            (
                "length",
                ok(vec![tensor("a", 2, &[2], 0, 4)]),
                vec![&payload],
            ),
            (
                "outside",
                ok(vec![tensor("a", 2, &[4], 4, 16)]),
                vec![&payload],
            ),
            (
                "straddle",
                ok(vec![tensor("a", 2, &[2], 4, 8)]),
                vec![&payload[..8], &payload[8..]],
            ),
            (
                "overflow",
                ok(vec![tensor("a", 7, &[1 << 40, 1 << 40], 0, 0)]),
                vec![&payload],
            ),
            (
                "offset overflow",
                ok(vec![tensor("a", 5, &[1], u64::MAX, 1)]),
                vec![&payload],
            ),
            (
                "dims",
                ok(vec![tensor("a", 5, &[1; 9], 0, 1)]),
                vec![&payload],
            ),
            (
                "empty key",
                ok(vec![tensor("", 5, &[1], 0, 1)]),
                vec![&payload],
            ),
            (
                "duplicate",
                ok(vec![tensor("a", 5, &[1], 0, 1), tensor("a", 5, &[1], 1, 1)]),
                vec![&payload],
            ),
            (
                "bool",
                ok(vec![tensor("b", 8, &[1], 0, 1)]),
                vec![&[2u8][..]],
            ),
            ("frames", ok(vec![]), vec![&payload[..1]; 65]),
            (
                "jpeg",
                ok(vec![pb::Tensor {
                    encoding: 2,
                    ..tensor("a", 5, &[1], 0, 1)
                }]),
                vec![&payload],
            ),
        ];
        for (name, resp, pl) in cases {
            let bad = decode_reply(&frames(&resp, &pl), &Limits::default()).unwrap_err();
            assert_eq!(bad.request_id, 9, "{name}");
        }
        let mut clash = ok(vec![tensor("a", 5, &[1], 0, 1)]);
        clash.metadata.insert("a".into(), "x".into());
        assert!(decode_reply(&frames(&clash, &[&payload]), &Limits::default()).is_err());
    }

    #[test]
    fn broken_framing_is_malformed_with_request_id_zero() {
        let env = Bytes::from(response("m", 3, pb::Status::Ok).encode_to_vec());
        let limits = Limits::default();
        for fr in [
            vec![],
            vec![Bytes::new()],
            vec![Bytes::from_static(b"x"), env.clone()],
            vec![Bytes::new(), Bytes::from_static(&[0xff, 0xff, 0xff])],
        ] {
            assert_eq!(decode_reply(&fr, &limits).unwrap_err().request_id, 0);
        }
        let small = Limits {
            max_message_bytes: 4,
            ..limits
        };
        assert!(decode_reply(&[Bytes::new(), env], &small).is_err());
    }

    #[test]
    fn retryable_comes_from_the_reply_in_v2_and_from_the_table_in_1x() {
        let mut resp = response("m", 1, pb::Status::QueueFull);
        resp.retryable = false;
        resp.retry_after_ms = 25;
        let r = decode_reply(&frames(&resp, &[]), &Limits::default()).unwrap();
        assert!(!r.retryable());
        let err = r.into_result().unwrap_err();
        assert_eq!(
            (err.kind(), err.retry_after_ms()),
            (crate::ErrorKind::QueueFull, 25)
        );
        resp.protocol_version = 0;
        let r = decode_reply(&frames(&resp, &[]), &Limits::default()).unwrap();
        assert!(r.retryable());
        resp.status = 0;
        assert!(decode_reply(&frames(&resp, &[]), &Limits::default())
            .unwrap()
            .is_ok());
        resp.status = 99;
        let err = decode_reply(&frames(&resp, &[]), &Limits::default())
            .unwrap()
            .into_result()
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::UnknownStatus);
    }

    #[test]
    fn control_step_is_sent_only_when_set_even_when_zero() {
        let p = params(Limits::default());
        let env = |obs: &Observation<'_>| {
            let out = encode_observation(&p, obs).unwrap();
            pb::Observation::decode(&out[1][..]).unwrap()
        };
        assert_eq!(env(&Observation::new()).control_step, None);
        assert_eq!(
            env(&Observation::new().control_step(0)).control_step,
            Some(0)
        );
        assert_eq!(
            env(&Observation::new().control_step(1234)).control_step,
            Some(1234)
        );
    }

    #[test]
    fn the_chunk_fields_of_a_reply_are_read_and_absent_ones_are_none() {
        let mut resp = response("m", 1, pb::Status::Ok);
        let plain = decode_reply(&frames(&resp, &[]), &Limits::default()).unwrap();
        assert_eq!(
            (plain.first_action_step(), plain.valid_until_ns()),
            (None, None)
        );
        assert_eq!(plain.action_period_ms(), 0.0);
        resp.first_action_step = Some(0);
        resp.action_period_ms = 20.0;
        resp.predicted_delay_steps = 1.5;
        resp.actual_delay_steps = 1.25;
        resp.valid_until_ns = 1_700_000_000_320_000_000;
        let r = decode_reply(&frames(&resp, &[]), &Limits::default()).unwrap();
        assert_eq!(r.first_action_step(), Some(0), "step 0 is a step");
        assert_eq!(
            (
                r.action_period_ms(),
                r.predicted_delay_steps(),
                r.actual_delay_steps()
            ),
            (20.0, 1.5, 1.25)
        );
        assert_eq!(r.valid_until_ns(), Some(1_700_000_000_320_000_000));
        resp.valid_until_ns = 0;
        let r = decode_reply(&frames(&resp, &[]), &Limits::default()).unwrap();
        assert_eq!(r.valid_until_ns(), None, "0 on the wire is no expiry");
    }
}

//! The receiving side of an observation, for a server: the frames a ROUTER received after
//! the routing identity (`["", envelope, payload...]`) checked against every rule the
//! reference server applies (protocol §2, §4, §7; server-py `protocol.decode_request`).
//!
//! What this gives is a verdict and a map of the payload, not error texts: an accepting
//! check says where each tensor's bytes lie, so a server can view them in place; a
//! refusing one names the broken rule only roughly ([`Refusal`]), and a server words the
//! reply with its reference decoder, which is then the one place the texts live. The
//! check must never accept what the reference decoder refuses; refusing more is safe
//! (the reference decoder then has the last word), so wherever a rule is subtle this
//! errs on the side of refusing. Never panics, whatever the bytes.
use std::borrow::Cow;

use prost::Message as _;

use crate::codec::lay_out_payload;
use crate::pb;
use crate::wire::dtype::DType;
use crate::wire::limits::Limits;
use crate::wire::status::Status;
use crate::wire::tables;
use crate::PROTOCOL_VERSION;

/// Why [`check_observation`] did not accept the frames (for logs and tests; the reply's
/// text comes from the reference decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Frame count, delimiter, payload frame count or total size.
    Framing,
    /// The envelope is not a valid `Observation`.
    Envelope,
    /// A `protocol_version` newer than this crate speaks (§9).
    Version,
    /// An empty `model_id`: a describe request (§12) or a missing model, both answered
    /// by the reference decoder.
    NoModel,
    /// An id, type, token or hint out of bounds.
    Field,
    /// Metadata count, key or value.
    Metadata,
    /// A tensor descriptor or its bytes.
    Tensor,
}

/// Where one tensor's bytes lie: payload frame `frame` (0 = the first payload frame), from
/// byte `offset` of that frame, `count` elements of `dtype`. A zero-size tensor has
/// `frame == None` (it needs no bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpan {
    /// The descriptor's key.
    pub key: String,
    /// The element type.
    pub dtype: DType,
    /// The shape, every dimension >= 0.
    pub shape: Vec<i64>,
    /// The payload frame holding the bytes; `None` for a zero-size tensor.
    pub frame: Option<usize>,
    /// Offset of the first byte within that frame.
    pub offset: usize,
    /// Elements.
    pub count: usize,
}

/// An accepted observation: the place of each tensor, and the envelope fields a server
/// reads before it decides to serve it ([`ObservationHead`]). (The rest of the envelope is
/// the server's to read with its own protobuf runtime: this check only vouches for it.)
#[derive(Debug, Clone)]
pub struct CheckedObservation {
    /// One span per descriptor, in descriptor order.
    pub tensors: Vec<TensorSpan>,
    /// Bytes in all payload frames.
    pub payload_bytes: usize,
    /// Who sent it, for what, and how long it may take.
    pub head: ObservationHead,
}

/// The fields of an accepted observation's envelope that decide whether and how fast it
/// must be served, and that a refusal echoes ([`encode_refusal`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservationHead {
    /// `client.id`.
    pub client_id: String,
    /// `model_id` (never empty in an accepted observation).
    pub model_id: String,
    /// `request_id` (0 for 1.x senders).
    pub request_id: u64,
    /// `protocol_version` (0 for 1.x senders).
    pub protocol_version: u32,
    /// `timestamp_ns`, the robot's clock.
    pub timestamp_ns: u64,
    /// `latency_budget_ms` (0: the server's default).
    pub latency_budget_ms: f32,
    /// `deadline_ns` (0: none).
    pub deadline_ns: u64,
    /// Whether `actions_remaining` is set.
    pub has_actions_remaining: bool,
    /// `control_rate_hz` (0: unknown).
    pub control_rate_hz: f32,
    /// `priority` (0 = highest).
    pub priority: u32,
    /// `auth_token`.
    pub auth_token: String,
}

/// A refusal of the observation `head` describes: the reply's envelope (a `ModelResponse`
/// with `status`, `error` and no tensors) and how many payload frames follow it, each
/// empty. A 1.x peer (`protocol_version` < 2) cannot read the status field: it also gets
/// status and error in metadata and exactly one (empty) payload frame, as every 1.x reply
/// has. `now_ns` is the server's wall clock (Unix epoch ns).
pub fn encode_refusal(
    head: &ObservationHead,
    status: Status,
    error: &str,
    response_id: &str,
    now_ns: u64,
) -> (Vec<u8>, usize) {
    let mut resp = pb::ModelResponse {
        client: Some(pb::Client {
            id: head.client_id.clone(),
            ..Default::default()
        }),
        response_id: response_id.to_owned(),
        timestamp_ns: now_ns,
        model_id: head.model_id.clone(),
        request_id: head.request_id,
        status: status.code(),
        error: error.to_owned(),
        protocol_version: PROTOCOL_VERSION,
        retryable: status.table_retryable().unwrap_or(false),
        observation_timestamp_ns: head.timestamp_ns,
        ..Default::default()
    };
    let payload_frames = if head.protocol_version < 2 {
        resp.metadata.insert("status".to_owned(), status.name());
        resp.metadata.insert("error".to_owned(), error.to_owned());
        1
    } else {
        0
    };
    (resp.encode_to_vec(), payload_frames)
}

/// One output tensor of a reply: its bytes in C order, little-endian.
#[derive(Debug, Clone)]
pub struct ReplyTensor<'a> {
    /// The output's key.
    pub key: &'a str,
    /// The element type.
    pub dtype: DType,
    /// The shape.
    pub shape: &'a [usize],
    /// `shape`'s product elements of `dtype`.
    pub bytes: &'a [u8],
}

/// The action-chunk fields of an OK reply (`ModelResponse` fields 16-20).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReplyChunk {
    /// The control step the chunk's first action is for, when the robot counts steps.
    pub first_action_step: Option<u64>,
    /// Time between the chunk's actions.
    pub action_period_ms: f32,
    /// The delay the server predicted at dispatch, in control steps.
    pub predicted_delay_steps: f32,
    /// The delay it took, in control steps.
    pub actual_delay_steps: f32,
    /// Unix epoch ns after which the chunk should not be used (0: no limit).
    pub valid_until_ns: u64,
}

/// The fields of one reply besides its outputs.
#[derive(Debug, Clone, Default)]
pub struct ReplyHead<'a> {
    /// The observation's `client.id`.
    pub client_id: &'a str,
    /// The observation's `model_id`.
    pub model_id: &'a str,
    /// The observation's `request_id`.
    pub request_id: u64,
    /// The observation's `protocol_version`: below 2, the 1.x layout (see [`encode_reply`]).
    pub peer_version: u32,
    /// The status's wire value.
    pub status: i32,
    /// Why, when the status is not OK.
    pub error: &'a str,
    /// The server-unique id of this reply.
    pub response_id: &'a str,
    /// When the reply was produced (Unix epoch ns).
    pub now_ns: u64,
    /// The observation's `timestamp_ns`, echoed.
    pub observation_timestamp_ns: u64,
    /// A hint for QUEUE_FULL and DEADLINE_UNMEETABLE (0: none).
    pub retry_after_ms: u32,
    /// Where the time went (`inference_latency_ms` repeats its `inference_ms`).
    pub timing: Option<crate::Timing>,
    /// The action-chunk fields of an OK reply.
    pub chunk: Option<ReplyChunk>,
}

/// A reply whose outputs a receiver with the given limits would refuse (the server words
/// why with its reference encoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimits;

/// A reply's envelope and its payload frames (borrowing the large tensors).
pub type EncodedReply<'a> = (Vec<u8>, Vec<Cow<'a, [u8]>>);

/// A reply: its envelope and payload frames (`frames[0]` is the first payload frame; the
/// routing identity and the empty delimiter go before them). String `metadata` and the
/// `tensors` are the model's outputs. A 1.x peer (`peer_version` < 2) gets exactly one
/// payload frame (empty when there are no tensors) and, when the status is not OK, the
/// status and error in metadata too. More payload frames than `limits` allow are joined
/// into one. [`OverLimits`] when a receiver with `limits` would refuse the reply (a key,
/// dimension, tensor or metadata count or length, or the size): checked before anything is
/// sent, as libzmq would end the connection over a message beyond its size limit.
pub fn encode_reply<'a>(
    head: &ReplyHead<'_>,
    metadata: &[(&str, &str)],
    tensors: &[ReplyTensor<'a>],
    limits: &Limits,
) -> Result<EncodedReply<'a>, OverLimits> {
    if tensors.len() > limits.max_tensors
        || tensors
            .iter()
            .any(|t| t.key.len() > limits.max_key_bytes || t.shape.len() > limits.max_dims)
        || metadata.len() > limits.max_metadata_entries
        || metadata.iter().any(|(k, v)| {
            k.is_empty()
                || k.len() > limits.max_key_bytes
                || v.len() > limits.max_metadata_value_bytes
        })
    {
        return Err(OverLimits);
    }
    let v1 = head.peer_version < 2;
    let (descriptors, mut payload) = lay_out_payload(
        tensors.iter().map(|t| (t.key, t.dtype, t.shape, t.bytes)),
        v1,
        0,
    );
    if payload.len() > limits.max_payload_frames {
        payload = vec![Cow::Owned(payload.concat())];
    }
    let mut resp = pb::ModelResponse {
        client: Some(pb::Client {
            id: head.client_id.to_owned(),
            ..Default::default()
        }),
        response_id: head.response_id.to_owned(),
        timestamp_ns: head.now_ns,
        tensors: descriptors,
        inference_latency_ms: head.timing.as_ref().map_or(0.0, |t| t.inference_ms),
        model_id: head.model_id.to_owned(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        request_id: head.request_id,
        status: head.status,
        error: head.error.to_owned(),
        timing: head.timing.map(|t| pb::ServerTiming {
            queue_wait_ms: t.queue_wait_ms,
            inference_ms: t.inference_ms,
            total_ms: t.total_ms,
            batch_size: t.batch_size,
        }),
        protocol_version: PROTOCOL_VERSION,
        retryable: tables::retryable(head.status).unwrap_or(false),
        observation_timestamp_ns: head.observation_timestamp_ns,
        retry_after_ms: head.retry_after_ms,
        ..Default::default()
    };
    if let Some(chunk) = head.chunk {
        resp.first_action_step = chunk.first_action_step;
        resp.action_period_ms = chunk.action_period_ms;
        resp.predicted_delay_steps = chunk.predicted_delay_steps;
        resp.actual_delay_steps = chunk.actual_delay_steps;
        resp.valid_until_ns = chunk.valid_until_ns;
    }
    if v1 && head.status != Status::Ok.code() {
        resp.metadata
            .insert("status".to_owned(), Status::from_code(head.status).name());
        resp.metadata
            .insert("error".to_owned(), head.error.to_owned());
    }
    let envelope = resp.encode_to_vec();
    let size = payload
        .iter()
        .fold(envelope.len(), |acc, f| acc.saturating_add(f.len()));
    if size > limits.max_message_bytes {
        return Err(OverLimits);
    }
    Ok((envelope, payload))
}

fn text_ok(text: &str, max: usize, required: bool) -> bool {
    if text.is_empty() {
        return !required;
    }
    text.len() <= max
}

fn hint_ok(value: f32) -> bool {
    // NaN fails both comparisons, as in the reference decoder.
    value >= 0.0 && value.is_finite()
}

/// Checks `frames` (`["", envelope, payload...]`, the routing identity already removed)
/// against every rule of the reference decoder; the accepted observation maps each tensor
/// onto its payload frame.
pub fn check_observation(frames: &[&[u8]], limits: &Limits) -> Result<CheckedObservation, Refusal> {
    let (delimiter, envelope_bytes, payload) = match frames {
        [delimiter, envelope, payload @ ..] => (delimiter, *envelope, payload),
        _ => return Err(Refusal::Framing),
    };
    if !delimiter.is_empty() {
        return Err(Refusal::Framing);
    }
    if payload.len() > limits.max_payload_frames {
        return Err(Refusal::Framing);
    }
    let payload_bytes: usize = payload.iter().map(|f| f.len()).sum();
    if envelope_bytes.len().saturating_add(payload_bytes) > limits.max_message_bytes {
        return Err(Refusal::Framing);
    }
    let envelope = pb::Observation::decode(envelope_bytes).map_err(|_| Refusal::Envelope)?;
    // A newer peer's fields may mean what this server cannot know (a describe request of any
    // version is the reference decoder's to answer: it has no model id, refused below).
    if envelope.protocol_version > PROTOCOL_VERSION {
        return Err(Refusal::Version);
    }

    let (client_id, client_type) = envelope
        .client
        .as_ref()
        .map(|c| (c.id.as_str(), c.r#type.as_str()))
        .unwrap_or(("", ""));
    if !text_ok(client_id, limits.max_id_bytes, true) {
        return Err(Refusal::Field);
    }
    if envelope.model_id.is_empty() {
        return Err(Refusal::NoModel);
    }
    if !text_ok(&envelope.model_id, limits.max_id_bytes, true)
        || !text_ok(client_type, limits.max_id_bytes, false)
        || !text_ok(&envelope.auth_token, limits.max_auth_token_bytes, false)
        || !hint_ok(envelope.urgency)
        || !hint_ok(envelope.latency_budget_ms)
        || !hint_ok(envelope.control_rate_hz)
    {
        return Err(Refusal::Field);
    }
    if envelope.metadata.len() > limits.max_metadata_entries
        || envelope.metadata.iter().any(|(k, v)| {
            k.is_empty()
                || k.len() > limits.max_key_bytes
                || v.len() > limits.max_metadata_value_bytes
        })
    {
        return Err(Refusal::Metadata);
    }
    // A describe key beside a model id is an ordinary metadata entry: the reference
    // decoder answers such a message as a request, and so does this check.
    let tensors = map_tensors(&envelope, payload, limits)?;
    let head = ObservationHead {
        client_id: client_id.to_owned(),
        model_id: envelope.model_id.clone(),
        request_id: envelope.request_id,
        protocol_version: envelope.protocol_version,
        timestamp_ns: envelope.timestamp_ns,
        latency_budget_ms: envelope.latency_budget_ms,
        deadline_ns: envelope.deadline_ns,
        has_actions_remaining: envelope.actions_remaining.is_some(),
        control_rate_hz: envelope.control_rate_hz,
        priority: envelope.priority,
        auth_token: envelope.auth_token.clone(),
    };
    Ok(CheckedObservation {
        tensors,
        payload_bytes,
        head,
    })
}

fn map_tensors(
    envelope: &pb::Observation,
    payload: &[&[u8]],
    limits: &Limits,
) -> Result<Vec<TensorSpan>, Refusal> {
    let descriptors = &envelope.tensors;
    if descriptors.len() > limits.max_tensors {
        return Err(Refusal::Tensor);
    }
    // Logical offsets of each payload frame in the concatenated payload (u128: no sum of
    // frame sizes or descriptor fields can overflow it).
    let mut bounds: Vec<(u128, u128)> = Vec::with_capacity(payload.len());
    let mut start: u128 = 0;
    for frame in payload {
        let end = start + frame.len() as u128;
        bounds.push((start, end));
        start = end;
    }
    let total = start;
    let mut spans: Vec<TensorSpan> = Vec::with_capacity(descriptors.len());
    for t in descriptors {
        let key = t.key.as_str();
        if key.is_empty()
            || key.len() > limits.max_key_bytes
            || spans.iter().any(|s| s.key == key)
            || envelope.metadata.contains_key(key)
        {
            return Err(Refusal::Tensor);
        }
        let dtype = DType::from_code(t.dtype).ok_or(Refusal::Tensor)?;
        // ENCODING_UNSPECIFIED (0) and RAW (1) only: compressed tensors are refused.
        if !(t.encoding == 0 || t.encoding == 1) {
            return Err(Refusal::Tensor);
        }
        if t.shape.len() > limits.max_dims || t.shape.iter().any(|&d| d < 0) {
            return Err(Refusal::Tensor);
        }
        let mut count: u128 = 1;
        for &d in &t.shape {
            // Dimensions are < 2^63 and at most 8 of them: saturate rather than overflow;
            // a saturated product never equals a u64 byte_length below.
            count = count.saturating_mul(d as u128);
        }
        let needed = count.saturating_mul(dtype.item_size() as u128);
        let length = t.byte_length as u128;
        if needed != length {
            return Err(Refusal::Tensor);
        }
        if length == 0 {
            spans.push(TensorSpan {
                key: key.to_owned(),
                dtype,
                shape: t.shape.clone(),
                frame: None,
                offset: 0,
                count: 0,
            });
            continue;
        }
        let begin = t.byte_offset as u128;
        if begin + length > total {
            return Err(Refusal::Tensor);
        }
        // The first frame holding `begin` must hold the whole range.
        let index = bounds
            .iter()
            .position(|&(lo, hi)| lo <= begin && begin < hi)
            .ok_or(Refusal::Tensor)?;
        let (lo, hi) = bounds.get(index).copied().ok_or(Refusal::Tensor)?;
        if begin + length > hi {
            return Err(Refusal::Tensor);
        }
        // Both fit in usize: they lie inside a frame held in memory.
        let offset = (begin - lo) as usize;
        let bytes = payload
            .get(index)
            .and_then(|frame| frame.get(offset..offset + length as usize))
            .ok_or(Refusal::Tensor)?;
        if dtype == DType::Bool && bytes.iter().any(|&b| b > 1) {
            return Err(Refusal::Tensor);
        }
        spans.push(TensorSpan {
            key: key.to_owned(),
            dtype,
            shape: t.shape.clone(),
            frame: Some(index),
            offset,
            count: count as usize,
        });
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_observation, EncodeParams};
    use crate::wire::tensor::Observation;

    fn params() -> EncodeParams<'static> {
        EncodeParams {
            client_id: "r1",
            client_type: "",
            model_id: "m",
            request_id: 1,
            timestamp_ns: 1,
            latency_budget_ms: 0.0,
            priority: 0,
            deadline_ns: None,
            actions_remaining: None,
            control_rate_hz: None,
            auth_token: "",
            single_payload_frame: false,
            limits: Limits::default(),
        }
    }

    fn frames_of(obs: &Observation<'_>) -> Vec<Vec<u8>> {
        encode_observation(&params(), obs)
            .unwrap()
            .into_iter()
            .map(|f| f.into_owned())
            .collect()
    }

    fn check(frames: &[Vec<u8>]) -> Result<CheckedObservation, Refusal> {
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        check_observation(&refs, &Limits::default())
    }

    #[test]
    fn what_the_client_encodes_is_accepted_and_mapped_onto_its_frames() {
        let small = [1.0f32, 2.0];
        let large = vec![7u8; 5000];
        let obs = Observation::new()
            .tensor("a", &small, &[2])
            .tensor("img", &large, &[50, 100])
            .metadata("task", "pick");
        let frames = frames_of(&obs);
        let checked = check(&frames).unwrap();
        assert_eq!(checked.tensors.len(), 2);
        for span in &checked.tensors {
            let frame = &frames[2 + span.frame.unwrap()];
            let len = span.count * span.dtype.item_size();
            let expected: &[u8] = if span.key == "a" {
                bytemuck::cast_slice(&small)
            } else {
                &large
            };
            assert_eq!(&frame[span.offset..span.offset + len], expected);
        }
    }

    #[test]
    fn the_head_carries_the_envelope_fields_a_refusal_echoes() {
        let data = [1u8; 4];
        let obs = Observation::new().tensor("x", &data, &[4]);
        let frames = frames_of(&obs);
        let head = check(&frames).unwrap().head;
        assert_eq!(head.client_id, "r1");
        assert_eq!(head.model_id, "m");
        assert_eq!(head.request_id, 1);
        assert_eq!(head.protocol_version, PROTOCOL_VERSION);
        assert_eq!(head.timestamp_ns, 1);

        let (envelope, payload_frames) =
            encode_refusal(&head, Status::DeadlineUnmeetable, "too late", "s-n1", 42);
        assert_eq!(payload_frames, 0);
        let resp = pb::ModelResponse::decode(envelope.as_slice()).unwrap();
        assert_eq!(resp.status, Status::DeadlineUnmeetable.code());
        assert_eq!(resp.error, "too late");
        assert_eq!(resp.request_id, 1);
        assert_eq!(resp.model_id, "m");
        assert_eq!(resp.client.unwrap().id, "r1");
        assert_eq!(resp.response_id, "s-n1");
        assert_eq!(resp.timestamp_ns, 42);
        assert_eq!(resp.observation_timestamp_ns, 1);
        assert!(resp.retryable);
        assert!(resp.metadata.is_empty() && resp.tensors.is_empty());

        // A 1.x peer reads the status from metadata and always gets one payload frame.
        let old = ObservationHead {
            protocol_version: 0,
            ..head
        };
        let (envelope, payload_frames) = encode_refusal(&old, Status::Expired, "stale", "s-n2", 43);
        assert_eq!(payload_frames, 1);
        let resp = pb::ModelResponse::decode(envelope.as_slice()).unwrap();
        assert_eq!(
            resp.metadata.get("status").map(String::as_str),
            Some("EXPIRED")
        );
        assert_eq!(
            resp.metadata.get("error").map(String::as_str),
            Some("stale")
        );
        assert_eq!(resp.protocol_version, PROTOCOL_VERSION);
    }

    #[test]
    fn broken_rules_are_refused() {
        let obs = Observation::new().tensor_bytes("b", DType::Bool, &[0, 1], &[2]);
        let mut frames = frames_of(&obs);
        assert!(check(&frames).is_ok());
        let last = frames.len() - 1;
        frames[last][0] = 2; // a BOOL byte that is not 0 or 1
        assert_eq!(check(&frames).unwrap_err(), Refusal::Tensor);
        assert_eq!(check(&frames[1..]).unwrap_err(), Refusal::Framing);
        let mut garbage = frames.clone();
        garbage[1] = vec![0xff, 0xff, 0xff];
        assert_eq!(check(&garbage).unwrap_err(), Refusal::Envelope);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep over mutated envelopes and payloads.
        let data = [3i64, 4, 5];
        let obs = Observation::new().tensor("x", &data, &[3]);
        let frames = frames_of(&obs);
        let mut seed: u32 = 7;
        for _ in 0..20_000 {
            let mut f = frames.clone();
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let which = 1 + (seed as usize >> 8) % (f.len() - 1);
            if !f[which].is_empty() {
                let at = (seed as usize >> 12) % f[which].len();
                f[which][at] ^= (seed >> 24) as u8 | 1;
            }
            let _ = check(&f);
        }
    }

    fn reply_frames(
        head: &ReplyHead<'_>,
        metadata: &[(&str, &str)],
        tensors: &[ReplyTensor<'_>],
    ) -> Vec<bytes::Bytes> {
        let (envelope, payload) =
            encode_reply(head, metadata, tensors, &Limits::default()).unwrap();
        let mut frames = vec![bytes::Bytes::new(), bytes::Bytes::from(envelope)];
        frames.extend(
            payload
                .into_iter()
                .map(|f| bytes::Bytes::from(f.into_owned())),
        );
        frames
    }

    #[test]
    fn a_reply_reads_back_through_the_client_decoder_field_for_field() {
        let action = [0.5f32, -1.0, 2.0];
        let image = vec![3u8; 4000]; // a frame of its own
        let head = ReplyHead {
            client_id: "r1",
            model_id: "m",
            request_id: 9,
            peer_version: 2,
            status: Status::Ok.code(),
            response_id: "b-1",
            now_ns: 5,
            observation_timestamp_ns: 4,
            timing: Some(crate::Timing {
                queue_wait_ms: 0.25,
                inference_ms: 1.5,
                total_ms: 2.0,
                batch_size: 3,
            }),
            chunk: Some(ReplyChunk {
                first_action_step: Some(7),
                action_period_ms: 20.0,
                predicted_delay_steps: 1.0,
                actual_delay_steps: 2.0,
                valid_until_ns: 99,
            }),
            ..Default::default()
        };
        let tensors = [
            ReplyTensor {
                key: "action",
                dtype: DType::Float32,
                shape: &[3],
                bytes: bytemuck::cast_slice(&action),
            },
            ReplyTensor {
                key: "img",
                dtype: DType::Uint8,
                shape: &[40, 100],
                bytes: &image,
            },
        ];
        let frames = reply_frames(&head, &[("note", "hi")], &tensors);
        assert_eq!(
            frames.len(),
            4,
            "delimiter, envelope, the small frame, the image"
        );
        let reply = crate::codec::decode_reply(&frames, &Limits::default()).unwrap();
        assert_eq!(
            (reply.client_id(), reply.model_id(), reply.request_id().0),
            ("r1", "m", 9)
        );
        assert_eq!(
            (reply.status(), reply.error(), reply.retryable()),
            (Status::Ok, "", false)
        );
        assert_eq!(reply.first_action_step(), Some(7));
        let t = reply.timing().unwrap();
        assert_eq!((t.inference_ms, t.batch_size), (1.5, 3));
        assert_eq!(reply.metadata().get("note").map(String::as_str), Some("hi"));
        let got = reply.tensor("action").unwrap();
        assert_eq!(got.shape(), &[3]);
        assert_eq!(&got.bytes()[..], bytemuck::cast_slice::<f32, u8>(&action));
        assert_eq!(&reply.tensor("img").unwrap().bytes()[..], &image[..]);
    }

    #[test]
    fn a_1x_peer_gets_one_payload_frame_and_a_failure_in_metadata_too() {
        let head = ReplyHead {
            client_id: "r1",
            model_id: "m",
            status: Status::QueueFull.code(),
            error: "full",
            response_id: "b-2",
            ..Default::default()
        };
        let frames = reply_frames(&head, &[], &[]);
        assert_eq!(frames.len(), 3);
        assert!(frames[2].is_empty());
        let env = pb::ModelResponse::decode(&frames[1][..]).unwrap();
        assert!(env.retryable);
        assert_eq!(
            env.metadata.get("status").map(String::as_str),
            Some("QUEUE_FULL")
        );
        assert_eq!(env.metadata.get("error").map(String::as_str), Some("full"));
        let two = [1u16, 2];
        let big = vec![1u8; 5000];
        let ok = ReplyHead {
            status: Status::Ok.code(),
            ..head
        };
        let tensors = [
            ReplyTensor {
                key: "a",
                dtype: DType::Uint16,
                shape: &[2],
                bytes: bytemuck::cast_slice(&two),
            },
            ReplyTensor {
                key: "b",
                dtype: DType::Uint8,
                shape: &[5000],
                bytes: &big,
            },
        ];
        let frames = reply_frames(&ok, &[], &tensors);
        assert_eq!(frames.len(), 3, "1.x: everything in one frame");
        assert!(pb::ModelResponse::decode(&frames[1][..])
            .unwrap()
            .metadata
            .is_empty());
    }

    #[test]
    fn a_reply_a_receiver_would_refuse_is_not_encoded() {
        let head = ReplyHead {
            peer_version: 2,
            status: 1,
            ..Default::default()
        };
        let long = "k".repeat(Limits::default().max_key_bytes + 1);
        let x = [0u8];
        let over = [ReplyTensor {
            key: &long,
            dtype: DType::Uint8,
            shape: &[1],
            bytes: &x,
        }];
        assert_eq!(
            encode_reply(&head, &[], &over, &Limits::default()).unwrap_err(),
            OverLimits
        );
        assert!(encode_reply(&head, &[("", "v")], &[], &Limits::default()).is_err());
        let small = Limits {
            max_message_bytes: 100,
            ..Limits::default()
        };
        let big = vec![0u8; 200];
        let t = [ReplyTensor {
            key: "x",
            dtype: DType::Uint8,
            shape: &[200],
            bytes: &big,
        }];
        assert!(encode_reply(&head, &[], &t, &small).is_err());
        let large = vec![1u8; 3000]; // each a frame of its own: three frames
        let many: Vec<ReplyTensor<'_>> = (0..3)
            .map(|_| ReplyTensor {
                key: "x",
                dtype: DType::Uint8,
                shape: &[3000],
                bytes: &large,
            })
            .collect();
        let two_frames = Limits {
            max_payload_frames: 2,
            ..Limits::default()
        };
        let (_, payload) = encode_reply(&head, &[], &many, &two_frames).unwrap();
        assert_eq!(payload.len(), 1, "joined into one frame");
        assert_eq!(payload[0].len(), 9000);
    }
}

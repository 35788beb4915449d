//! The answer to one observation: envelope fields and tensors over the received frames.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::wire::dtype::{DType, Element};
use crate::wire::status::Status;
use crate::RequestId;

/// Server-side timing of one request, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Arrival until dispatch to the model.
    pub queue_wait_ms: f32,
    /// Execution of the batch that held this request.
    pub inference_ms: f32,
    /// Arrival until the reply was handed to the socket.
    pub total_ms: f32,
    /// Requests in that batch.
    pub batch_size: u32,
}

/// The action-chunk fields of a reply (protocol §3 "Action chunks", §14); every field is
/// its default in a reply to a robot that sent no `control_step` and no control rate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ChunkInfo {
    pub(crate) first_action_step: Option<u64>,
    pub(crate) action_period_ms: f32,
    pub(crate) predicted_delay_steps: f32,
    pub(crate) actual_delay_steps: f32,
    pub(crate) valid_until_ns: Option<u64>,
}

/// One output tensor: its bytes are a slice of the received ZeroMQ frame (no copy).
#[derive(Debug, Clone)]
pub struct Tensor {
    pub(crate) key: String,
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Bytes,
}

impl Tensor {
    /// The tensor's name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Its element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Its shape (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.item_size()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The little-endian C-order bytes, a cheap clone of a slice of the received frame.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// Whether the bytes are aligned for the dtype, so that [`Tensor::try_as`] borrows
    /// instead of copying (received frames are only guaranteed 4-byte aligned).
    pub fn is_aligned(&self) -> bool {
        (self.data.as_ptr() as usize) % self.dtype.item_size() == 0
    }

    /// The elements as `T`: borrowed from the frame when aligned, else copied.
    /// An `invalid_argument` error when `T` is not this tensor's dtype.
    pub fn try_as<T: Element + bytemuck::AnyBitPattern>(&self) -> Result<Cow<'_, [T]>> {
        if T::DTYPE != self.dtype {
            return Err(Error::invalid(format!(
                "tensor '{}' is {}, not {}",
                self.key,
                self.dtype,
                T::DTYPE
            )));
        }
        match bytemuck::try_cast_slice::<u8, T>(&self.data) {
            Ok(view) => Ok(Cow::Borrowed(view)),
            // Unaligned: an element-wise copy, never a cast over misaligned memory.
            Err(_) => Ok(Cow::Owned(bytemuck::pod_collect_to_vec(&self.data))),
        }
    }

    /// Every element widened to `f64`, whatever the dtype (int64 / uint64 values past
    /// 2^53 round): what [`crate::chunks::ActionChunkQueue::add_reply`] queues.
    pub fn to_f64(&self) -> Vec<f64> {
        fn each<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
            data.chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        let d = &self.data[..];
        match self.dtype {
            DType::Float16 => each(d, |b| f64::from(half::f16::from_le_bytes(b))),
            DType::BFloat16 => each(d, |b| f64::from(half::bf16::from_le_bytes(b))),
            DType::Float32 => each(d, |b| f64::from(f32::from_le_bytes(b))),
            DType::Float64 => each(d, f64::from_le_bytes),
            DType::Uint8 | DType::Bool => each(d, |[b]: [u8; 1]| f64::from(b)),
            DType::Int8 => each(d, |b| f64::from(i8::from_le_bytes(b))),
            DType::Int16 => each(d, |b| f64::from(i16::from_le_bytes(b))),
            DType::Uint16 => each(d, |b| f64::from(u16::from_le_bytes(b))),
            DType::Int32 => each(d, |b| f64::from(i32::from_le_bytes(b))),
            DType::Uint32 => each(d, |b| f64::from(u32::from_le_bytes(b))),
            DType::Int64 => each(d, |b| i64::from_le_bytes(b) as f64),
            DType::Uint64 => each(d, |b| u64::from_le_bytes(b) as f64),
        }
    }

    /// A BOOL tensor's elements (the decoder checked every byte is 0 or 1).
    pub fn to_bools(&self) -> Result<Vec<bool>> {
        if self.dtype != DType::Bool {
            return Err(Error::invalid(format!(
                "tensor '{}' is {}, not BOOL",
                self.key, self.dtype
            )));
        }
        Ok(self.data.iter().map(|&b| b != 0).collect())
    }
}

/// One reply from the server.
#[derive(Debug, Clone)]
pub struct Reply {
    pub(crate) model_id: String,
    pub(crate) client_id: String,
    pub(crate) request_id: RequestId,
    pub(crate) status: Status,
    pub(crate) error: String,
    pub(crate) retryable: bool,
    pub(crate) retry_after_ms: u32,
    pub(crate) timing: Option<Timing>,
    pub(crate) inference_latency_ms: f32,
    pub(crate) response_id: String,
    pub(crate) timestamp_ns: u64,
    pub(crate) observation_timestamp_ns: u64,
    pub(crate) protocol_version: u32,
    pub(crate) tensors: Vec<Tensor>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) chunk: ChunkInfo,
    pub(crate) round_trip: Option<Duration>,
}

impl Reply {
    /// The model that answered.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }
    /// The client id echoed by the server.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
    /// The request this answers (for a 1.x reply, the request it was matched to).
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }
    /// The outcome (1.x replies, which carry none, read as OK).
    pub fn status(&self) -> Status {
        self.status
    }
    /// Whether the status is OK.
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
    /// The server's reason when the status is not OK.
    pub fn error(&self) -> &str {
        &self.error
    }
    /// Whether a fresh observation can succeed unchanged (v2: the reply's field; 1.x:
    /// the proto's status table).
    pub fn retryable(&self) -> bool {
        self.retryable
    }
    /// The server's back-off hint in ms on QUEUE_FULL / DEADLINE_UNMEETABLE; 0 = none.
    pub fn retry_after_ms(&self) -> u32 {
        self.retry_after_ms
    }
    /// Server-side timing (`None` from 1.x servers).
    pub fn timing(&self) -> Option<Timing> {
        self.timing
    }
    /// Model execution time in ms (the 1.x field).
    pub fn inference_latency_ms(&self) -> f32 {
        self.inference_latency_ms
    }
    /// The server's id of this reply, for logs.
    pub fn response_id(&self) -> &str {
        &self.response_id
    }
    /// When the reply was produced, Unix epoch ns.
    pub fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }
    /// The observation's `timestamp_ns`, echoed.
    pub fn observation_timestamp_ns(&self) -> u64 {
        self.observation_timestamp_ns
    }
    /// 2 for v2 servers, 0 for 1.x.
    pub fn protocol_version(&self) -> u32 {
        self.protocol_version
    }
    /// The output tensors, in the server's order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }
    /// The output tensor named `key`.
    pub fn tensor(&self, key: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.key == key)
    }
    /// The string outputs.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
    /// The control step row 0 of this reply's `actions` applies to: the observation's
    /// `control_step`, echoed. `None` when the observation sent none (or from a server
    /// that does not echo it).
    pub fn first_action_step(&self) -> Option<u64> {
        self.chunk.first_action_step
    }
    /// The time between two rows of the chunk, ms (`1000 / control_rate_hz`); 0 without a
    /// control rate.
    pub fn action_period_ms(&self) -> f32 {
        self.chunk.action_period_ms
    }
    /// The control steps the server predicted would pass between the observation and the
    /// robot receiving the reply (what the model was told); 0 without a control rate.
    pub fn predicted_delay_steps(&self) -> f32 {
        self.chunk.predicted_delay_steps
    }
    /// The control steps that did pass from the observation's arrival at the server to the
    /// reply leaving it; 0 without a control rate.
    pub fn actual_delay_steps(&self) -> f32 {
        self.chunk.actual_delay_steps
    }
    /// Unix ns after which this reply's actions must not be executed; `None` = no expiry.
    pub fn valid_until_ns(&self) -> Option<u64> {
        self.chunk.valid_until_ns
    }
    /// From sending the observation to receiving this reply, measured by this client.
    pub fn round_trip(&self) -> Option<Duration> {
        self.round_trip
    }

    /// `Ok(self)` when OK, else the error of its status (what `get_result()` raises).
    pub fn into_result(self) -> Result<Reply> {
        Error::from_reply(self)
    }

    /// The kind of error this reply raises; `None` when OK.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        ErrorKind::for_status(self.status)
    }
}

//! Replies as a server would send them, for the unit tests of the codec and the matcher.
use bytes::Bytes;
use prost::Message as _;

use crate::pb;

pub(crate) fn tensor(key: &str, dtype: i32, shape: &[i64], offset: u64, length: u64) -> pb::Tensor {
    pb::Tensor {
        key: key.into(),
        dtype,
        shape: shape.to_vec(),
        byte_offset: offset,
        byte_length: length,
        timestamp_ns: 0,
        encoding: pb::Encoding::Raw as i32,
    }
}

pub(crate) fn response(model_id: &str, request_id: u64, status: pb::Status) -> pb::ModelResponse {
    pb::ModelResponse {
        model_id: model_id.into(),
        request_id,
        status: status as i32,
        protocol_version: 2,
        ..Default::default()
    }
}

/// `["", envelope, payload...]` as a DEALER receives it.
pub(crate) fn frames(resp: &pb::ModelResponse, payload: &[&[u8]]) -> Vec<Bytes> {
    let mut out = vec![Bytes::new(), Bytes::from(resp.encode_to_vec())];
    out.extend(payload.iter().map(|p| Bytes::copy_from_slice(p)));
    out
}

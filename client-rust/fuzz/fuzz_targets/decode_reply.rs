//! Any bytes, cut into frames, through the reply decoder and every typed accessor of what
//! it returns: a panic, an abort or a sanitizer report is an escape.
//!
//! Input layout: a first byte N (frames, mod 16), then per frame a 2-byte little-endian
//! length and that many bytes (clamped to what is left); the rest is the last frame.
#![no_main]

use bytes::Bytes;
use inferential::codec::decode_reply;
use inferential::{DType, Limits};
use libfuzzer_sys::fuzz_target;

fn frames(data: &[u8]) -> Vec<Bytes> {
    let Some((&n, mut rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for _ in 0..(n % 16) {
        let (len, tail) = match rest {
            [a, b, tail @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), tail),
            _ => (0, &[][..]),
        };
        let len = len.min(tail.len());
        let (frame, tail) = tail.split_at(len);
        out.push(Bytes::copy_from_slice(frame));
        rest = tail;
    }
    out.push(Bytes::copy_from_slice(rest));
    out
}

fuzz_target!(|data: &[u8]| {
    // Small limits too, so the limit checks are reached with small inputs.
    let small = Limits {
        max_message_bytes: 4096,
        max_tensors: 4,
        max_payload_frames: 4,
        max_dims: 3,
        max_key_bytes: 16,
        max_metadata_entries: 4,
        max_metadata_value_bytes: 64,
        ..Limits::default()
    };
    let frames = frames(data);
    for limits in [Limits::default(), small] {
        let Ok(reply) = decode_reply(&frames, &limits) else {
            continue;
        };
        let _ = reply.clone().into_result();
        for t in reply.tensors() {
            assert_eq!(t.bytes().len(), t.len() * t.dtype().item_size());
            let _ = t.is_aligned();
            let n = match t.dtype() {
                DType::Float16 => t.try_as::<half::f16>().map(|v| v.len()),
                DType::Float32 => t.try_as::<f32>().map(|v| v.len()),
                DType::Float64 => t.try_as::<f64>().map(|v| v.len()),
                DType::BFloat16 => t.try_as::<half::bf16>().map(|v| v.len()),
                DType::Uint8 => t.try_as::<u8>().map(|v| v.len()),
                DType::Int32 => t.try_as::<i32>().map(|v| v.len()),
                DType::Int64 => t.try_as::<i64>().map(|v| v.len()),
                DType::Bool => t.to_bools().map(|v| v.len()),
                DType::Int8 => t.try_as::<i8>().map(|v| v.len()),
                DType::Int16 => t.try_as::<i16>().map(|v| v.len()),
                DType::Uint16 => t.try_as::<u16>().map(|v| v.len()),
                DType::Uint32 => t.try_as::<u32>().map(|v| v.len()),
                DType::Uint64 => t.try_as::<u64>().map(|v| v.len()),
                _ => Ok(t.len()),
            };
            assert_eq!(n.ok(), Some(t.len()), "typed view of {}", t.key());
            let elements: usize = t.shape().iter().product();
            assert_eq!(elements, t.len());
        }
    }
});

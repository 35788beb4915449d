//! Bounds enforced on every outgoing observation and every incoming reply (protocol §7).

/// Message bounds. Keep them equal to the server's: a violating observation is refused
/// locally before sending, a violating reply is dropped as malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole message (envelope + payload frames), bytes. Also ZMQ_MAXMSGSIZE.
    pub max_message_bytes: usize,
    /// Tensors per message.
    pub max_tensors: usize,
    /// Payload frames per message.
    pub max_payload_frames: usize,
    /// Dimensions per tensor.
    pub max_dims: usize,
    /// Tensor key and metadata key, UTF-8 bytes.
    pub max_key_bytes: usize,
    /// Client id, client type and model id, UTF-8 bytes.
    pub max_id_bytes: usize,
    /// Metadata entries.
    pub max_metadata_entries: usize,
    /// Metadata value, UTF-8 bytes.
    pub max_metadata_value_bytes: usize,
    /// Auth token, bytes.
    pub max_auth_token_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024 * 1024,
            max_tensors: 64,
            max_payload_frames: 64,
            max_dims: 8,
            max_key_bytes: 256,
            max_id_bytes: 256,
            max_metadata_entries: 64,
            max_metadata_value_bytes: 4096,
            max_auth_token_bytes: 1024,
        }
    }
}

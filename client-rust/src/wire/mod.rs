//! The wire vocabulary: dtypes, statuses, limits and observation tensors.
pub mod dtype;
pub mod limits;
pub mod status;
#[rustfmt::skip]
pub(crate) mod tables;
pub mod server;
pub mod tensor;

//! Observations: tensors over borrowed slices, metadata strings and per-observation fields.
use std::borrow::Cow;
use std::collections::BTreeMap;

use super::dtype::{DType, Element};

/// One tensor of an observation: little-endian C-order bytes borrowed from the caller.
#[derive(Debug, Clone)]
pub(crate) struct TensorInput<'a> {
    pub(crate) key: String,
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
    pub(crate) bytes: Cow<'a, [u8]>,
}

/// What a robot sends to a model: tensors, metadata strings and per-observation fields.
///
/// Built by chaining; the first invalid input (a shape that does not match the data, a
/// BOOL byte other than 0 or 1) is kept and reported by `observe()`/`request()` as an
/// `invalid_argument` error, before anything is sent.
///
/// ```
/// use inferential::Observation;
/// let image = vec![0u8; 224 * 224 * 3];
/// let joints = [0.1f32; 7];
/// let obs = Observation::new()
///     .tensor("image", &image, &[224, 224, 3])
///     .tensor("joints", &joints, &[7])
///     .metadata("task", "pick")
///     .urgency(0.5);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Observation<'a> {
    pub(crate) tensors: Vec<TensorInput<'a>>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) urgency: f32,
    pub(crate) steps_remaining: Option<u32>,
    pub(crate) priority: Option<u32>,
    pub(crate) deadline_ns: Option<u64>,
    pub(crate) actions_remaining: Option<u32>,
    pub(crate) control_rate_hz: Option<f32>,
    pub(crate) control_step: Option<u64>,
    pub(crate) invalid: Option<String>,
}

impl<'a> Observation<'a> {
    /// An empty observation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tensor of `data` (C order) with the given runtime `shape` (`&[]` for a scalar).
    /// The product of `shape` must equal `data.len()`.
    pub fn tensor<T: Element>(self, key: &str, data: &'a [T], shape: &[usize]) -> Self {
        let bytes: &'a [u8] = bytemuck::cast_slice(data);
        self.push(key, T::DTYPE, shape, Cow::Borrowed(bytes), Some(data.len()))
    }

    /// Adds a tensor given as raw little-endian C-order bytes of `dtype`.
    /// `bytes.len()` must equal the product of `shape` times the dtype's item size.
    pub fn tensor_bytes(self, key: &str, dtype: DType, bytes: &'a [u8], shape: &[usize]) -> Self {
        self.push(key, dtype, shape, Cow::Borrowed(bytes), None)
    }

    /// Adds a tensor that owns its bytes (for data built on the fly).
    pub fn tensor_owned(self, key: &str, dtype: DType, bytes: Vec<u8>, shape: &[usize]) -> Self {
        self.push(key, dtype, shape, Cow::Owned(bytes), None)
    }

    fn push(
        mut self,
        key: &str,
        dtype: DType,
        shape: &[usize],
        bytes: Cow<'a, [u8]>,
        elements: Option<usize>,
    ) -> Self {
        if self.invalid.is_some() {
            return self;
        }
        let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let needed = count.and_then(|c| c.checked_mul(dtype.item_size()));
        let problem = match (count, needed) {
            (None, _) | (_, None) => Some(format!("shape {shape:?} overflows")),
            (Some(c), Some(n)) => {
                if elements.is_some_and(|e| e != c) {
                    Some(format!(
                        "shape {shape:?} holds {c} elements but the slice has {}",
                        elements.unwrap_or(0)
                    ))
                } else if bytes.len() != n {
                    Some(format!(
                        "shape {shape:?} of {dtype} needs {n} bytes but {} were given",
                        bytes.len()
                    ))
                } else if dtype == DType::Bool && bytes.iter().any(|&b| b > 1) {
                    Some("BOOL bytes must be 0 or 1".to_owned())
                } else {
                    None
                }
            }
        };
        match problem {
            Some(p) => self.invalid = Some(format!("tensor '{key}': {p}")),
            None => self.tensors.push(TensorInput {
                key: key.to_owned(),
                dtype,
                shape: shape.to_vec(),
                bytes,
            }),
        }
        self
    }

    /// Adds a metadata string (sent in the envelope's `metadata` map).
    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Urgency, 0..1 (finite, >= 0; the server clamps values above 1). Default 0.
    pub fn urgency(mut self, urgency: f32) -> Self {
        self.urgency = urgency;
        self
    }

    /// Steps left in the current trajectory.
    pub fn steps_remaining(mut self, steps: u32) -> Self {
        self.steps_remaining = Some(steps);
        self
    }

    /// Overrides the model handle's priority for this observation (0 is highest).
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Overrides the model handle's absolute deadline (Unix epoch ns) for this observation.
    pub fn deadline_ns(mut self, deadline_ns: u64) -> Self {
        self.deadline_ns = Some(deadline_ns);
        self
    }

    /// Overrides the model handle's actions remaining for this observation.
    pub fn actions_remaining(mut self, actions: u32) -> Self {
        self.actions_remaining = Some(actions);
        self
    }

    /// Overrides the model handle's control rate (Hz) for this observation.
    pub fn control_rate_hz(mut self, hz: f32) -> Self {
        self.control_rate_hz = Some(hz);
        self
    }

    /// The robot's control step when the sensors were read (action chunks, protocol §3):
    /// the server echoes it as the reply's `first_action_step`, the step row 0 of the
    /// reply's `actions` applies to. Not sent unless set (0 is a step like any other).
    pub fn control_step(mut self, step: u64) -> Self {
        self.control_step = Some(step);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_that_does_not_match_the_slice_is_kept_as_the_first_problem() {
        let data = [1.0f32, 2.0, 3.0];
        let obs = Observation::new()
            .tensor("x", &data, &[2])
            .tensor("y", &data, &[3]);
        assert!(obs.invalid.as_deref().is_some_and(|m| m.contains("'x'")));
        assert!(obs.tensors.is_empty());
    }

    #[test]
    fn bool_bytes_other_than_zero_or_one_are_refused() {
        let obs = Observation::new().tensor_bytes("b", DType::Bool, &[0, 1, 2], &[3]);
        assert!(obs.invalid.is_some());
        let flags = [true, false];
        let obs = Observation::new().tensor("b", &flags, &[2]);
        assert!(obs.invalid.is_none());
        assert_eq!(
            obs.tensors.first().map(|t| &t.bytes[..]),
            Some(&[1u8, 0][..])
        );
    }

    #[test]
    fn an_overflowing_shape_is_refused_not_wrapped() {
        let obs = Observation::new().tensor_bytes("x", DType::Float64, &[], &[usize::MAX, 2]);
        assert!(obs
            .invalid
            .as_deref()
            .is_some_and(|m| m.contains("overflows")));
    }
}

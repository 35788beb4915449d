//! The robot side of chunked policies (protocol §14): future actions by control step,
//! merged across overlapping chunks. Same semantics as Python's `ActionChunkQueue`.
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::reply::Reply;

/// A user blend: `f(old, new) -> action`.
pub type BlendFn = Box<dyn Fn(&[f64], &[f64]) -> Vec<f64> + Send>;

/// How a new row merges with the action already queued for its step.
pub enum Blend {
    /// The new row replaces the old action.
    Latest,
    /// The mean of every row proposed for that step.
    Average,
    /// `w * new + (1 - w) * old`, with `w` in (0, 1] (0.7 is the usual choice).
    Exponential(f64),
    /// A user function `f(old, new) -> action`.
    Custom(BlendFn),
}

impl std::fmt::Debug for Blend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blend::Latest => f.write_str("Latest"),
            Blend::Average => f.write_str("Average"),
            Blend::Exponential(w) => write!(f, "Exponential({w})"),
            Blend::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Counters of an [`ActionChunkQueue`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkQueueStats {
    /// Actions returned by `pop()`.
    pub executed: u64,
    /// Steps with no action queued.
    pub underruns: u64,
    /// Steps whose action had expired.
    pub held: u64,
    /// Rows blended into an action already queued.
    pub merged: u64,
    /// Rows dropped because their step had already been executed.
    pub late: u64,
}

#[derive(Debug)]
struct Slot {
    action: Vec<f64>,
    count: u32,
    valid_until_ns: Option<u64>,
}

/// The wall clock in Unix ns, compared with `valid_until_ns`.
pub type Clock = Box<dyn Fn() -> u64 + Send>;

/// Future actions by control step. `pop()` is called once per control step: a step is
/// executed at most once, steps only move forward, an expired action is never returned,
/// and every `None` is counted as exactly one underrun or hold.
///
/// ```
/// use inferential::chunks::{ActionChunkQueue, Blend};
/// let mut queue = ActionChunkQueue::new(Blend::Average, 0).unwrap();
/// queue.add(&[0.0f32, 1.0, 2.0, 3.0], 2, 0, None).unwrap(); // 2 rows of 2 joints
/// queue.add(&[4.0f32, 5.0], 2, 1, None).unwrap(); // overlaps step 1
/// assert_eq!(queue.pop(), Some(vec![0.0, 1.0]));
/// assert_eq!(queue.pop(), Some(vec![3.0, 4.0]));
/// assert_eq!(queue.pop(), None); // an underrun
/// ```
pub struct ActionChunkQueue {
    blend: Blend,
    next_step: u64,
    slots: BTreeMap<u64, Slot>,
    clock: Clock,
    stats: ChunkQueueStats,
}

impl std::fmt::Debug for ActionChunkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionChunkQueue")
            .field("blend", &self.blend)
            .field("next_step", &self.next_step)
            .field("queued", &self.slots.len())
            .field("stats", &self.stats)
            .finish()
    }
}

fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl ActionChunkQueue {
    /// A queue whose first `pop()` serves `start_step`, on the wall clock.
    /// `invalid_argument` when an exponential weight is outside (0, 1].
    pub fn new(blend: Blend, start_step: u64) -> Result<Self> {
        Self::with_clock(blend, start_step, Box::new(wall_clock_ns))
    }

    /// The same with an injected clock (Unix ns), for tests and simulations.
    pub fn with_clock(blend: Blend, start_step: u64, clock: Clock) -> Result<Self> {
        if let Blend::Exponential(w) = blend {
            if !(w > 0.0 && w <= 1.0) {
                return Err(Error::invalid(format!(
                    "new_weight must be in (0, 1], got {w}"
                )));
            }
        }
        Ok(ActionChunkQueue {
            blend,
            next_step: start_step,
            slots: BTreeMap::new(),
            clock,
            stats: ChunkQueueStats::default(),
        })
    }

    /// The control step the next `pop()` serves.
    pub fn next_step(&self) -> u64 {
        self.next_step
    }

    /// The queue's clock now (Unix ns): what `valid_until_ns` is compared with.
    pub fn now_ns(&self) -> u64 {
        (self.clock)()
    }

    /// The counters.
    pub fn stats(&self) -> ChunkQueueStats {
        self.stats
    }

    /// Queues a chunk of rows of `row_len` values (C order, e.g. a `[H, J]` tensor): row `i`
    /// is the action for step `start_step + i`. Rows for steps already executed are dropped
    /// (counted late); rows for steps holding an action are merged with the blend. Returns
    /// the rows queued or merged. `valid_until_ns` applies to every row and to the actions
    /// they merge into.
    pub fn add<T: Copy + Into<f64>>(
        &mut self,
        actions: &[T],
        row_len: usize,
        start_step: u64,
        valid_until_ns: Option<u64>,
    ) -> Result<usize> {
        if row_len == 0 || actions.len() % row_len != 0 {
            return Err(Error::invalid(format!(
                "{} values do not split into rows of {row_len}",
                actions.len()
            )));
        }
        let mut queued = 0;
        for (i, row) in actions.chunks_exact(row_len).enumerate() {
            let step = start_step.saturating_add(i as u64);
            if step < self.next_step {
                self.stats.late += 1;
                continue;
            }
            let row: Vec<f64> = row.iter().map(|&v| v.into()).collect();
            match self.slots.get_mut(&step) {
                None => {
                    self.slots.insert(
                        step,
                        Slot {
                            action: row,
                            count: 1,
                            valid_until_ns,
                        },
                    );
                }
                Some(slot) => {
                    slot.action = merge(&self.blend, slot, row)?;
                    slot.count = slot.count.saturating_add(1);
                    slot.valid_until_ns = valid_until_ns;
                    self.stats.merged += 1;
                }
            }
            queued += 1;
        }
        Ok(queued)
    }

    /// Queues the `actions` output of a chunked policy's reply: row 0 applies to the reply's
    /// `first_action_step` (the observation's `control_step`, echoed), or to `start_step`
    /// when the reply has none (a server that does not echo it); every row expires at the
    /// reply's `valid_until_ns`. The tensor's first dimension is the steps, the rest one
    /// action (any numeric dtype, widened to `f64`). Returns the rows queued or merged.
    ///
    /// `invalid_argument` when the reply has no `actions` tensor, the tensor is a scalar,
    /// or neither the reply nor the caller gives a start step.
    pub fn add_reply(&mut self, reply: &Reply, start_step: Option<u64>) -> Result<usize> {
        let Some(start) = reply.first_action_step().or(start_step) else {
            return Err(Error::invalid(
                "the reply carries no first_action_step: pass the start step",
            ));
        };
        let actions = reply.tensor("actions").ok_or_else(|| {
            Error::invalid(format!(
                "the reply of model '{}' has no 'actions' tensor",
                reply.model_id()
            ))
        })?;
        let Some((&rows, action_shape)) = actions.shape().split_first() else {
            return Err(Error::invalid(
                "'actions' is a scalar: a chunk needs at least one dimension (its rows are steps)",
            ));
        };
        if rows == 0 {
            return Ok(0);
        }
        // One value per action when the tensor is [H]; a [H, J, ...] row holds the rest.
        let row_len = action_shape.iter().product::<usize>();
        if row_len == 0 {
            return Ok(0);
        }
        self.add(&actions.to_f64(), row_len, start, reply.valid_until_ns())
    }

    /// The action for the current step, then the next step. `None` when none is queued (an
    /// underrun) or when it expired (a hold); either way the step is spent.
    pub fn pop(&mut self) -> Option<Vec<f64>> {
        let step = self.next_step;
        self.next_step = step.saturating_add(1);
        let Some(slot) = self.slots.remove(&step) else {
            self.stats.underruns += 1;
            return None;
        };
        if slot.valid_until_ns.is_some_and(|v| (self.clock)() > v) {
            self.stats.held += 1;
            return None;
        }
        self.stats.executed += 1;
        Some(slot.action)
    }

    /// Valid actions queued for consecutive steps from `next_step`: what the robot sends as
    /// `actions_remaining`.
    pub fn actions_remaining(&self) -> u32 {
        let now = (self.clock)();
        let mut count = 0u32;
        let mut step = self.next_step;
        while let Some(slot) = self.slots.get(&step) {
            if slot.valid_until_ns.is_some_and(|v| now > v) {
                break;
            }
            count = count.saturating_add(1);
            step = step.saturating_add(1);
        }
        count
    }

    /// The valid actions queued for consecutive steps from `next_step` (at most `limit`),
    /// without executing them; `None` when there are none. A policy doing real-time chunking
    /// is sent these with the next observation, as the prefix it must not change.
    pub fn peek(&self, limit: Option<usize>) -> Option<Vec<Vec<f64>>> {
        let count = self.actions_remaining() as usize;
        let count = limit.map_or(count, |l| count.min(l));
        if count == 0 {
            return None;
        }
        let rows = self
            .slots
            .range(self.next_step..)
            .take(count)
            .map(|(_, slot)| slot.action.clone())
            .collect();
        Some(rows)
    }

    /// Forgets every queued action (e.g. after an emergency stop).
    pub fn clear(&mut self) {
        self.slots.clear();
    }

    /// Actions queued.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no action is queued.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

fn merge(blend: &Blend, slot: &Slot, new: Vec<f64>) -> Result<Vec<f64>> {
    if new.len() != slot.action.len() {
        return Err(Error::invalid(format!(
            "a row of {} values cannot merge into an action of {}",
            new.len(),
            slot.action.len()
        )));
    }
    let n = f64::from(slot.count);
    let zip = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
        slot.action
            .iter()
            .zip(&new)
            .map(|(&o, &v)| f(o, v))
            .collect()
    };
    Ok(match blend {
        Blend::Latest => new,
        Blend::Average => zip(&|o, v| o + (v - o) / (n + 1.0)),
        Blend::Exponential(w) => zip(&|o, v| w * v + (1.0 - w) * o),
        Blend::Custom(f) => f(&slot.action, &new),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn rows_align_to_steps_and_late_rows_are_dropped() {
        let mut q = ActionChunkQueue::new(Blend::Latest, 0).unwrap();
        assert_eq!(q.add(&[1.0f32, 2.0, 3.0], 1, 0, None).unwrap(), 3);
        assert_eq!(q.pop(), Some(vec![1.0]));
        assert_eq!(
            q.add(&[9.0f32, 8.0], 1, 0, None).unwrap(),
            1,
            "step 0 is spent"
        );
        assert_eq!(q.stats().late, 1);
        assert_eq!(q.pop(), Some(vec![8.0]));
        assert_eq!(q.actions_remaining(), 1);
    }

    #[test]
    fn average_and_exponential_blend_overlapping_rows() {
        let mut avg = ActionChunkQueue::new(Blend::Average, 0).unwrap();
        for v in [0.0f32, 3.0, 6.0] {
            avg.add(&[v], 1, 0, None).unwrap();
        }
        assert_eq!(avg.pop(), Some(vec![3.0]));
        assert_eq!(avg.stats().merged, 2);
        let mut exp = ActionChunkQueue::new(Blend::Exponential(0.5), 0).unwrap();
        exp.add(&[0.0f64], 1, 0, None).unwrap();
        exp.add(&[10.0f64], 1, 0, None).unwrap();
        assert_eq!(exp.pop(), Some(vec![5.0]));
        assert!(ActionChunkQueue::new(Blend::Exponential(0.0), 0).is_err());
    }

    #[test]
    fn an_expired_action_is_held_and_the_newer_chunk_vouches_for_merged_ones() {
        let now = Arc::new(AtomicU64::new(1000));
        let clock = Arc::clone(&now);
        let mut q = ActionChunkQueue::with_clock(
            Blend::Latest,
            0,
            Box::new(move || clock.load(Ordering::Relaxed)),
        )
        .unwrap();
        q.add(&[1.0f32, 2.0], 1, 0, Some(2000)).unwrap();
        q.add(&[5.0f32], 1, 1, Some(4000)).unwrap();
        now.store(2500, Ordering::Relaxed);
        assert_eq!(q.pop(), None);
        assert_eq!(q.pop(), Some(vec![5.0]));
        let s = q.stats();
        assert_eq!((s.held, s.executed, s.underruns), (1, 1, 0));
    }

    #[test]
    fn a_custom_blend_and_mismatched_rows() {
        let mut q =
            ActionChunkQueue::new(Blend::Custom(Box::new(|o, n| vec![o[0].max(n[0])])), 0).unwrap();
        q.add(&[4.0f32], 1, 0, None).unwrap();
        q.add(&[2.0f32], 1, 0, None).unwrap();
        assert!(q.add(&[1.0f32, 2.0], 2, 0, None).is_err());
        assert!(q.add(&[1.0f32, 2.0, 3.0], 2, 0, None).is_err());
        assert_eq!(q.pop(), Some(vec![4.0]));
    }

    fn chunked_reply(
        first: Option<u64>,
        valid_until_ns: u64,
        values: &[f32],
        shape: &[i64],
    ) -> Reply {
        use crate::test_support::{frames, response, tensor};
        let mut resp = response("chunked", 1, crate::pb::Status::Ok);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        resp.tensors = vec![tensor("actions", 2, shape, 0, bytes.len() as u64)];
        resp.first_action_step = first;
        resp.action_period_ms = 20.0;
        resp.valid_until_ns = valid_until_ns;
        crate::codec::decode_reply(&frames(&resp, &[&bytes]), &crate::Limits::default()).unwrap()
    }

    #[test]
    fn a_reply_queues_its_rows_from_first_action_step_until_valid_until() {
        let now = Arc::new(AtomicU64::new(1000));
        let clock = Arc::clone(&now);
        let mut q = ActionChunkQueue::with_clock(
            Blend::Latest,
            10,
            Box::new(move || clock.load(Ordering::Relaxed)),
        )
        .unwrap();
        // [3 steps, 2 joints] for steps 9..=11: step 9 is already behind the queue.
        let reply = chunked_reply(Some(9), 5000, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[3, 2]);
        assert_eq!(
            q.add_reply(&reply, Some(0)).unwrap(),
            2,
            "the reply's step wins"
        );
        assert_eq!(q.stats().late, 1);
        assert_eq!(q.peek(None), Some(vec![vec![2.0, 3.0], vec![4.0, 5.0]]));
        now.store(5001, Ordering::Relaxed);
        assert_eq!(q.pop(), None, "past the reply's valid_until_ns");
        assert_eq!(q.stats().held, 1);
    }

    #[test]
    fn a_reply_without_a_step_needs_the_callers_and_without_actions_is_refused() {
        let mut q = ActionChunkQueue::new(Blend::Latest, 0).unwrap();
        let reply = chunked_reply(None, 0, &[7.0, 8.0], &[2]);
        assert_eq!(reply.valid_until_ns(), None);
        let err = q.add_reply(&reply, None).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert_eq!(q.add_reply(&reply, Some(0)).unwrap(), 2);
        assert_eq!(
            q.pop(),
            Some(vec![7.0]),
            "a [H] tensor is one value per step"
        );
        let scalar = chunked_reply(Some(0), 0, &[1.0], &[]);
        assert!(q.add_reply(&scalar, None).is_err());
    }

    #[test]
    fn peek_shows_the_valid_consecutive_actions_without_executing_them() {
        let now = Arc::new(AtomicU64::new(0));
        let clock = Arc::clone(&now);
        let mut q = ActionChunkQueue::with_clock(
            Blend::Latest,
            0,
            Box::new(move || clock.load(Ordering::Relaxed)),
        )
        .unwrap();
        assert_eq!(q.peek(None), None);
        q.add(&[1.0f32, 2.0, 3.0], 1, 0, Some(100)).unwrap();
        q.add(&[9.0f32], 1, 5, None).unwrap(); // after a gap: not consecutive
        assert_eq!(q.peek(Some(2)), Some(vec![vec![1.0], vec![2.0]]));
        assert_eq!(q.peek(Some(0)), None);
        assert_eq!(q.peek(None).map(|r| r.len()), Some(3));
        assert_eq!(q.stats().executed, 0, "peeking executes nothing");
        assert_eq!(q.pop(), Some(vec![1.0]));
        now.store(101, Ordering::Relaxed);
        assert_eq!(q.peek(None), None, "expired actions are not shown");
    }
}

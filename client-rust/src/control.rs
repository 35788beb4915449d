//! A fixed-rate control loop over a chunked policy (protocol §14): a model handle, an
//! [`ActionChunkQueue`] and the clock. Same behaviour as Python's `ControlLoop`.
//!
//! Every control step ([`ControlLoop::step`]) it
//!
//! 1. takes the replies that arrived (without waiting) and queues their `actions` at the
//!    reply's `first_action_step`, expiring at its `valid_until_ns`;
//! 2. when no request is in flight and the queue holds at most `request_below` actions,
//!    sends a fresh observation with `control_step` (the step it is taken at),
//!    `actions_remaining` and `control_rate_hz` (so the server ranks the robot by runway
//!    and predicts its delay in steps), plus the queued actions as the `prev_actions`
//!    tensor (the frozen prefix a real-time-chunking policy keeps);
//! 3. pops this step's action: `None` on an underrun or a hold.
//!
//! The loop never waits for a reply: the robot keeps executing its queue while the next
//! chunk is computed.
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::chunks::{ActionChunkQueue, Blend};
use crate::connection::Model;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::dtype::DType;
use crate::wire::tensor::Observation;
use crate::{Reply, RequestId};

/// The input name the queued actions are sent under by default.
pub const PREFIX_INPUT: &str = "prev_actions";

/// One chunk as the robot received it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkArrival {
    /// The control step of its observation (row 0 of the chunk).
    pub sent_step: u64,
    /// The step the robot was about to execute when the chunk was queued.
    pub arrived_step: u64,
    /// The server's predicted delay, in control steps.
    pub predicted_delay_steps: f32,
    /// The delay the server measured (arrival -> reply sent), in control steps.
    pub actual_delay_steps: f32,
    /// Sending the observation -> queueing its chunk, measured here (`None` for a reply
    /// to a request the loop had already given up).
    pub round_trip: Option<Duration>,
}

/// Counters of a [`ControlLoop`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlLoopStats {
    /// Control steps run.
    pub steps: u64,
    /// Observations sent.
    pub requests: u64,
    /// Observations no connected server accepted in time (`server_unavailable`): the robot
    /// kept executing its queue and asks again next step.
    pub send_failed: u64,
    /// OK replies queued.
    pub chunks: u64,
    /// Replies with an error status, by status name.
    pub failed: BTreeMap<String, u64>,
    /// Requests given up after the reply timeout without a reply.
    pub lost: u64,
    /// Periods [`ControlLoop::run`] started a whole period late (the schedule restarts then
    /// instead of running several steps at once).
    pub overruns: u64,
    /// OK replies whose `actions` could not be queued (none, a scalar, or rows of another
    /// width than the queued ones): counted, never an error of the loop.
    pub unusable: u64,
    /// OK replies that arrived past their `valid_until_ns`.
    pub stale_chunks: u64,
    /// Their rows: the queue executes none of them.
    pub stale_rows: u64,
}

/// Ties a model handle, an [`ActionChunkQueue`] and a fixed control rate together.
///
/// ```no_run
/// use std::time::Duration;
/// use inferential::control::ControlLoop;
/// use inferential::{Connection, Observation};
///
/// # fn main() -> Result<(), inferential::Error> {
/// let conn = Connection::builder("tcp://127.0.0.1:5555").client_id("arm-01").connect()?;
/// let mut control = ControlLoop::new(conn.model("policy")?, 50.0)?;
/// let joints = [0.0f32; 7];
/// control.run_for(
///     Duration::from_secs(10),
///     |_step| Observation::new().tensor("joints", &joints, &[7]),
///     |action| { let _ = action; /* command the arm, or hold on None */ },
/// )?;
/// println!("{:?} {:?}", control.stats(), control.queue().stats());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ControlLoop {
    model: Model,
    rate_hz: f64,
    queue: ActionChunkQueue,
    request_below: Option<u32>,
    prefix_input: Option<String>,
    reply_timeout: Duration,
    history: usize,
    stats: ControlLoopStats,
    arrivals: VecDeque<ChunkArrival>,
    last_chunk_rows: u32,
    // (request id, control step, send time) of the request in flight.
    inflight: Option<(RequestId, u64, Instant)>,
}

impl ControlLoop {
    /// A loop at `rate_hz` (> 0) over `model`, with a new queue (latest blend, step 0),
    /// asking for a chunk once half the last one is left, sending `prev_actions`, and
    /// giving a request up after 1 s.
    pub fn new(model: Model, rate_hz: f64) -> Result<ControlLoop> {
        if !(rate_hz.is_finite() && rate_hz > 0.0) {
            return Err(Error::invalid(format!(
                "rate_hz must be finite and > 0, got {rate_hz}"
            )));
        }
        Ok(ControlLoop {
            model,
            rate_hz,
            queue: ActionChunkQueue::new(Blend::Latest, 0)?,
            request_below: None,
            prefix_input: Some(PREFIX_INPUT.to_owned()),
            reply_timeout: Duration::from_secs(1),
            history: 100_000,
            stats: ControlLoopStats::default(),
            arrivals: VecDeque::new(),
            last_chunk_rows: 0,
            inflight: None,
        })
    }

    /// The queue to fill (another blend, start step or clock).
    pub fn with_queue(mut self, queue: ActionChunkQueue) -> Self {
        self.queue = queue;
        self
    }

    /// Ask for a new chunk once the queue holds at most this many actions (and no request
    /// is in flight). Default: half the length of the last chunk received (at once before
    /// the first).
    pub fn request_below(mut self, actions: u32) -> Self {
        self.request_below = Some(actions);
        self
    }

    /// The input name the queued actions are sent under (float32 `[k, J]`); `None` sends
    /// none. Default `prev_actions`.
    pub fn prefix_input(mut self, name: Option<&str>) -> Self {
        self.prefix_input = name.map(str::to_owned);
        self
    }

    /// A request unanswered this long is given up (counted `lost`) and a new one may go
    /// out. Default 1 s.
    pub fn reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// How many recent [`ChunkArrival`]s are kept. Default 100,000.
    pub fn history(mut self, arrivals: usize) -> Self {
        self.history = arrivals;
        self
    }

    /// The counters.
    pub fn stats(&self) -> &ControlLoopStats {
        &self.stats
    }

    /// The queue (its counters say how many steps were executed, ran dry or held).
    pub fn queue(&self) -> &ActionChunkQueue {
        &self.queue
    }

    /// The queue, e.g. to clear it after an emergency stop.
    pub fn queue_mut(&mut self) -> &mut ActionChunkQueue {
        &mut self.queue
    }

    /// The most recent chunks received, oldest first.
    pub fn arrivals(&self) -> &VecDeque<ChunkArrival> {
        &self.arrivals
    }

    /// The control rate, Hz.
    pub fn rate_hz(&self) -> f64 {
        self.rate_hz
    }

    /// Runs one control step: queue the chunks that arrived, ask for one if due, pop this
    /// step's action (`None`: an underrun or a hold, the robot holds still).
    ///
    /// `observe` builds the observation and is called only when one goes out; it gets the
    /// control step the observation is taken at. Status errors and a send no server takes
    /// are counted, not returned: only a local error (`invalid_argument`, `closed`) is.
    pub fn step<'o>(
        &mut self,
        observe: impl FnOnce(u64) -> Observation<'o>,
    ) -> Result<Option<Vec<f64>>> {
        self.collect()?;
        let remaining = self.queue.actions_remaining();
        if self.inflight.is_none() && remaining <= self.threshold() {
            self.send(observe, remaining)?;
        }
        self.stats.steps += 1;
        Ok(self.queue.pop())
    }

    fn threshold(&self) -> u32 {
        self.request_below.unwrap_or(self.last_chunk_rows / 2)
    }

    fn send<'o>(
        &mut self,
        observe: impl FnOnce(u64) -> Observation<'o>,
        remaining: u32,
    ) -> Result<()> {
        let step = self.queue.next_step();
        let mut obs = observe(step)
            .control_step(step)
            .actions_remaining(remaining)
            .control_rate_hz(self.rate_hz as f32);
        if let (Some(name), Some(prefix)) = (&self.prefix_input, self.queue.peek(None)) {
            let cols = prefix.first().map_or(0, Vec::len);
            // float32 like the policy's own output; the rows all have one length (merge
            // refuses rows of another).
            let bytes: Vec<u8> = prefix
                .iter()
                .flatten()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect();
            obs = obs.tensor_owned(name, DType::Float32, bytes, &[prefix.len(), cols]);
        }
        match self.model.observe(&obs) {
            Ok(rid) => {
                self.inflight = Some((rid, step, Instant::now()));
                self.stats.requests += 1;
                Ok(())
            }
            Err(err) if err.kind() == ErrorKind::ServerUnavailable => {
                self.stats.send_failed += 1;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Queues every reply that arrived, without waiting.
    fn collect(&mut self) -> Result<()> {
        loop {
            let reply = match self.model.get_result(Duration::ZERO) {
                Ok(Some(reply)) => reply,
                Ok(None) => break,
                Err(err) => match err.status() {
                    // An error status: the robot keeps its queue and asks again.
                    Some(status) => {
                        *self.stats.failed.entry(status.name()).or_insert(0) += 1;
                        if let Some(rid) = err.request_id() {
                            self.settle(rid);
                        }
                        continue;
                    }
                    None => return Err(err),
                },
            };
            self.queue_reply(&reply)?;
        }
        if let Some((_, _, sent)) = self.inflight {
            if sent.elapsed() > self.reply_timeout {
                self.inflight = None;
                self.stats.lost += 1;
            }
        }
        Ok(())
    }

    fn queue_reply(&mut self, reply: &Reply) -> Result<()> {
        // Settled first, so a reply the queue cannot use still frees the next request.
        let sent = self.settle(reply.request_id());
        // A server that does not echo control_step: the loop's own record of the step.
        let Some(start) = reply.first_action_step().or(sent.map(|(_, step, _)| step)) else {
            return Ok(()); // nothing to align it with
        };
        let rows = reply
            .tensor("actions")
            .and_then(|t| t.shape().first().copied())
            .unwrap_or(0);
        if reply
            .valid_until_ns()
            .is_some_and(|v| self.queue.now_ns() > v)
        {
            self.stats.stale_chunks += 1;
            self.stats.stale_rows += rows as u64;
        }
        if self.queue.add_reply(reply, Some(start)).is_err() {
            // Bytes from the network: the robot keeps its queue and asks again.
            self.stats.unusable += 1;
            return Ok(());
        }
        self.last_chunk_rows = u32::try_from(rows).unwrap_or(u32::MAX);
        self.stats.chunks += 1;
        if self.history > 0 {
            if self.arrivals.len() >= self.history {
                self.arrivals.pop_front();
            }
            self.arrivals.push_back(ChunkArrival {
                sent_step: start,
                arrived_step: self.queue.next_step(),
                predicted_delay_steps: reply.predicted_delay_steps(),
                actual_delay_steps: reply.actual_delay_steps(),
                round_trip: sent.map(|(_, _, at)| at.elapsed()),
            });
        }
        Ok(())
    }

    /// The in-flight record of `rid` (cleared), or `None` for another request.
    fn settle(&mut self, rid: RequestId) -> Option<(RequestId, u64, Instant)> {
        match self.inflight {
            Some(inflight) if inflight.0 == rid => self.inflight.take(),
            _ => None,
        }
    }

    /// Calls [`ControlLoop::step`] every `1 / rate_hz` s for `steps` steps, handing each
    /// action to `act` (`None` on an underrun or a hold).
    pub fn run<'o>(
        &mut self,
        steps: u64,
        observe: impl FnMut(u64) -> Observation<'o>,
        act: impl FnMut(Option<Vec<f64>>),
    ) -> Result<&ControlLoopStats> {
        self.paced(|done, _| done < steps, observe, act)
    }

    /// The same for `duration`.
    pub fn run_for<'o>(
        &mut self,
        duration: Duration,
        observe: impl FnMut(u64) -> Observation<'o>,
        act: impl FnMut(Option<Vec<f64>>),
    ) -> Result<&ControlLoopStats> {
        self.paced(|_, elapsed| elapsed < duration, observe, act)
    }

    fn paced<'o>(
        &mut self,
        more: impl Fn(u64, Duration) -> bool,
        mut observe: impl FnMut(u64) -> Observation<'o>,
        mut act: impl FnMut(Option<Vec<f64>>),
    ) -> Result<&ControlLoopStats> {
        let period = Duration::from_secs_f64(1.0 / self.rate_hz);
        let start = Instant::now();
        let mut tick = start;
        let mut done = 0u64;
        while more(done, tick.saturating_duration_since(start)) {
            act(self.step(&mut observe)?);
            done += 1;
            tick += period;
            let now = Instant::now();
            if tick > now {
                std::thread::sleep(tick - now);
            } else if now - tick > period {
                // A whole period late: restart the schedule instead of bursting to catch
                // up (a robot executes one action per period, not several at once).
                self.stats.overruns += 1;
                tick = now;
            }
        }
        Ok(&self.stats)
    }
}

// A fixed-rate control loop over a chunked policy (docs/protocol.md §14): a model handle,
// an ActionChunkQueue and a clock, the same behaviour as ControlLoop in the Python client.
//
// Every step():
//   1. the replies that arrived (no waiting) go into the queue at their first_action_step
//      (the observation's control_step, echoed), expiring at their valid_until_ns;
//   2. when no request is in flight and the queue holds at most the threshold, a fresh
//      observation goes out with control_step (the step it is taken at),
//      actions_remaining and control_rate_hz (the server ranks it by runway and predicts
//      its delay in steps), plus the queued actions as a float32 [k, J] tensor (by default
//      "prev_actions": the frozen prefix a real-time-chunking policy keeps);
//   3. this step's action is popped: empty on an underrun or a hold (queue().stats()).
// run() calls step() at rate_hz on the monotonic clock. The loop never waits for a reply:
// the robot keeps executing its queue while the next chunk is computed.
//
// Not thread-safe: one thread owns the loop (the Model handle itself may be shared).
// Exceptions thrown by your own callbacks (the observation source, act, injected clocks)
// reach you unchanged; the loop's state stays consistent (nothing is marked in flight
// unless the observation was sent).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "inferential/chunks.hpp"
#include "inferential/connection.hpp"
#include "inferential/envelope.hpp"
#include "inferential/errors.hpp"

namespace inferential {

// One chunk as the robot received it.
struct ChunkArrival {
  std::int64_t sent_step = 0;     // its observation's control step (row 0's step)
  std::int64_t arrived_step = 0;  // the step the robot was about to execute when it was queued
  float predicted_delay_steps = 0;
  float actual_delay_steps = 0;
  std::optional<double> round_trip_ms;  // empty when it answered no request of this loop
};

// steps: control steps run. requests: observations sent. chunks: OK replies queued.
// failed: replies with an error status, by status value. lost: requests given up after
// reply_timeout_ms without a reply. overruns: periods run() started a whole period late
// (the schedule then restarts). stale_chunks / stale_rows: OK replies that arrived past
// their valid_until_ns and their rows (the queue executes none of them). send_failed:
// observations observe() refused (last_error() says why; the next step tries again).
// refused_chunks: OK replies the queue refused (no `actions` tensor, a row width that does
// not match the queued actions, ...).
struct ControlLoopStats {
  std::uint64_t steps = 0;
  std::uint64_t requests = 0;
  std::uint64_t chunks = 0;
  std::map<int, std::uint64_t> failed;
  std::uint64_t lost = 0;
  std::uint64_t overruns = 0;
  std::uint64_t stale_chunks = 0;
  std::uint64_t stale_rows = 0;
  std::uint64_t send_failed = 0;
  std::uint64_t refused_chunks = 0;
};

// Monotonic ns (pacing, round trips, reply timeouts); a sleep of that many ns; Unix ns.
using MonotonicClock = std::function<std::int64_t()>;
using SleepFunction = std::function<void(std::int64_t ns)>;
using WallClock = std::function<std::int64_t()>;

struct ControlLoopOptions {
  double rate_hz = 50.0;  // one action per step, one step per 1 / rate_hz s; > 0 and finite
  // The queue the loop fills (blend, start step, its clock for valid_until_ns).
  ChunkQueueOptions queue;
  // Ask for a new chunk once the queue holds at most this many actions (and none is in
  // flight). Empty: half the rows of the last chunk received (at once before the first).
  std::optional<std::uint32_t> request_below;
  // The input name the queued actions go under; empty sends none.
  std::optional<std::string> prefix_input = std::string("prev_actions");
  // A request unanswered this long is given up (counted lost) and a new one may go out. > 0.
  int reply_timeout_ms = 1000;
  std::size_t history = 100'000;  // ChunkArrivals kept (the most recent)
  MonotonicClock clock;  // empty: std::chrono::steady_clock
  SleepFunction sleep;   // empty: std::this_thread::sleep_for
  // Compared with valid_until_ns to count stale chunks; empty: the queue's clock when it
  // has one (a fake clock stays consistent), else the system clock.
  WallClock wall_clock;
};

class ControlLoop {
 public:
  // The observation of one step (tensors, metadata): called only when one goes out.
  using ObservationSource = std::function<Observation()>;
  // Receives each step's action, or nothing on an underrun or a hold (the robot holds still).
  using Actuator = std::function<void(const std::optional<std::vector<double>>& action)>;

  // invalid_argument when rate_hz is not > 0 and finite, reply_timeout_ms <= 0, or the
  // queue options are refused (ActionChunkQueue::create).
  [[nodiscard]] static Result<ControlLoop> create(Model model, ControlLoopOptions options = {}) noexcept;

  // One control step (above). Returns the action to execute now, or nothing.
  std::optional<std::vector<double>> step(const ObservationSource& observe);
  std::optional<std::vector<double>> step(const Observation& observation) {
    return step([&observation] { return observation; });
  }

  // step() every 1 / rate_hz s, each action handed to `act`, for `steps` steps or
  // `duration_s` seconds (whichever comes first; invalid_argument when neither is given).
  Result<ControlLoopStats> run(const ObservationSource& observe, const Actuator& act,
                               std::optional<std::uint64_t> steps = std::nullopt,
                               std::optional<double> duration_s = std::nullopt);

  const ControlLoopStats& stats() const noexcept { return stats_; }
  ActionChunkQueue& queue() noexcept { return queue_; }
  const ActionChunkQueue& queue() const noexcept { return queue_; }
  // The most recent chunks received, oldest first (at most ControlLoopOptions::history).
  const std::deque<ChunkArrival>& arrivals() const noexcept { return arrivals_; }
  // Why the last observe() or add failed (empty when nothing has failed yet).
  const std::optional<Error>& last_error() const noexcept { return last_error_; }
  bool in_flight() const noexcept { return inflight_.has_value(); }
  const Model& model() const noexcept { return model_; }

 private:
  struct InFlight {
    std::uint64_t request_id;
    std::int64_t step;
    std::int64_t sent_ns;  // monotonic
  };

  ControlLoop(Model model, ControlLoopOptions options, ActionChunkQueue queue);
  std::int64_t mono_now() const;
  std::int64_t wall_now() const;
  std::uint32_t threshold() const noexcept;
  void collect();
  void send(const ObservationSource& observe, std::uint32_t remaining);
  std::optional<InFlight> settle(std::uint64_t request_id) noexcept;

  Model model_;
  ControlLoopOptions options_;
  ActionChunkQueue queue_;
  ControlLoopStats stats_;
  std::deque<ChunkArrival> arrivals_;
  std::optional<Error> last_error_;
  std::optional<InFlight> inflight_;
  std::uint64_t last_chunk_rows_ = 0;
};

}  // namespace inferential

#include "inferential/control.hpp"

#include <chrono>
#include <cmath>
#include <limits>
#include <thread>
#include <utility>

namespace inferential {

namespace {

Error invalid(std::string message) {
  return Error{ErrorKind::invalid_argument, 0, false, 0, 0, {}, std::move(message)};
}

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::int64_t system_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The rows of a reply's `actions` tensor (0 when it has none or it is 0-d).
std::uint64_t chunk_rows(const Reply& reply) noexcept {
  const ReplyTensor* actions = reply.tensor("actions");
  if (!actions || actions->shape().empty() || actions->shape()[0] < 0) return 0;
  return static_cast<std::uint64_t>(actions->shape()[0]);
}

}  // namespace

Result<ControlLoop> ControlLoop::create(Model model, ControlLoopOptions options) noexcept {
  try {
    if (!(options.rate_hz > 0) || !std::isfinite(options.rate_hz))
      return invalid("ControlLoopOptions.rate_hz must be > 0 and finite, got " + std::to_string(options.rate_hz));
    if (options.reply_timeout_ms <= 0)
      return invalid("ControlLoopOptions.reply_timeout_ms must be > 0, got " + std::to_string(options.reply_timeout_ms));
    if (options.prefix_input && options.prefix_input->empty())
      return invalid("ControlLoopOptions.prefix_input is empty: leave it unset to send no prefix");
    // The stale count compares valid_until_ns with the same clock the queue expires by.
    if (!options.wall_clock) options.wall_clock = options.queue.clock ? options.queue.clock : WallClock(system_ns);
    if (!options.clock) options.clock = steady_ns;
    if (!options.sleep) options.sleep = [](std::int64_t ns) { std::this_thread::sleep_for(std::chrono::nanoseconds(ns)); };
    auto queue = ActionChunkQueue::create(options.queue);
    if (!queue) return std::move(queue).error();
    return ControlLoop(std::move(model), std::move(options), std::move(queue).value());
  } catch (...) {
    return Error{ErrorKind::internal, 0, false, 0, 0, {}, "out of memory in ControlLoop::create"};
  }
}

ControlLoop::ControlLoop(Model model, ControlLoopOptions options, ActionChunkQueue queue)
    : model_(std::move(model)), options_(std::move(options)), queue_(std::move(queue)) {}

std::int64_t ControlLoop::mono_now() const { return options_.clock(); }
std::int64_t ControlLoop::wall_now() const { return options_.wall_clock(); }

std::uint32_t ControlLoop::threshold() const noexcept {
  if (options_.request_below) return *options_.request_below;
  // Half the last chunk: the next one is asked for while half of this one is left to run.
  const std::uint64_t half = last_chunk_rows_ / 2;
  return half > std::numeric_limits<std::uint32_t>::max() ? std::numeric_limits<std::uint32_t>::max()
                                                          : static_cast<std::uint32_t>(half);
}

std::optional<std::vector<double>> ControlLoop::step(const ObservationSource& observe) {
  collect();
  const std::uint32_t remaining = queue_.actions_remaining();
  if (!inflight_ && remaining <= threshold()) send(observe, remaining);
  ++stats_.steps;
  return queue_.pop();
}

void ControlLoop::send(const ObservationSource& observe, std::uint32_t remaining) {
  Observation obs = observe();
  const std::int64_t step = queue_.next_step();
  // Kept alive until observe() returns: the Observation copies tensor bytes when it sends.
  std::vector<float> prefix;
  if (options_.prefix_input) {
    auto peeked = queue_.peek();
    if (peeked && !peeked->empty()) {
      // Chunks that never overlapped may differ in width: the prefix stops at the first
      // row that does not fit the tensor.
      const std::size_t width = peeked->front().size();
      std::size_t rows = 0;
      prefix.reserve(peeked->size() * width);
      for (const auto& row : *peeked) {
        if (row.size() != width) break;
        for (double v : row) prefix.push_back(static_cast<float>(v));
        ++rows;
      }
      obs.tensor(*options_.prefix_input, {static_cast<std::int64_t>(rows), static_cast<std::int64_t>(width)}, prefix);
    }
  }
  // Steps before 0 cannot be echoed (control_step is unsigned): such an observation goes
  // without one and its chunk is placed by the loop's own record of the step.
  if (step >= 0) obs.control_step(static_cast<std::uint64_t>(step));
  obs.actions_remaining(remaining).control_rate_hz(static_cast<float>(options_.rate_hz));
  auto sent = model_.observe(obs);
  if (!sent) {
    ++stats_.send_failed;
    last_error_ = std::move(sent).error();
    return;
  }
  inflight_ = InFlight{*sent, step, mono_now()};
  ++stats_.requests;
}

std::optional<ControlLoop::InFlight> ControlLoop::settle(std::uint64_t request_id) noexcept {
  if (inflight_ && inflight_->request_id == request_id) {
    auto done = inflight_;
    inflight_.reset();
    return done;
  }
  return std::nullopt;
}

void ControlLoop::collect() {
  while (true) {
    auto got = model_.get_result(0);
    if (!got) {
      const Error& e = got.error();
      if (e.status == 0) {  // not a reply (e.g. the connection is closed): nothing more to take
        last_error_ = e;
        break;
      }
      // An error status: the robot keeps executing its queue.
      ++stats_.failed[e.status];
      last_error_ = e;
      settle(e.request_id);
      continue;
    }
    if (!got->has_value()) break;
    const Reply& reply = **got;
    const auto sent = settle(reply.request_id);
    std::optional<std::int64_t> start;
    if (!reply.first_action_step) {  // a server that does not echo control_step: our own record
      if (!sent) continue;           // nothing to align it with
      start = sent->step;
    }
    const std::uint64_t rows = chunk_rows(reply);
    if (reply.valid_until_ns && wall_now() > 0 &&
        static_cast<std::uint64_t>(wall_now()) > *reply.valid_until_ns) {
      ++stats_.stale_chunks;
      stats_.stale_rows += rows;
    }
    auto added = queue_.add_reply(reply, start);
    if (!added) {
      ++stats_.refused_chunks;
      last_error_ = std::move(added).error();
      continue;
    }
    last_chunk_rows_ = rows;
    ++stats_.chunks;
    ChunkArrival arrival;
    arrival.sent_step = reply.first_action_step ? static_cast<std::int64_t>(*reply.first_action_step) : *start;
    arrival.arrived_step = queue_.next_step();
    arrival.predicted_delay_steps = reply.predicted_delay_steps;
    arrival.actual_delay_steps = reply.actual_delay_steps;
    if (sent) arrival.round_trip_ms = static_cast<double>(mono_now() - sent->sent_ns) / 1e6;
    if (options_.history > 0) {
      if (arrivals_.size() >= options_.history) arrivals_.pop_front();
      arrivals_.push_back(arrival);
    }
  }
  if (inflight_ && mono_now() - inflight_->sent_ns > static_cast<std::int64_t>(options_.reply_timeout_ms) * 1'000'000) {
    inflight_.reset();
    ++stats_.lost;
  }
}

Result<ControlLoopStats> ControlLoop::run(const ObservationSource& observe, const Actuator& act,
                                          std::optional<std::uint64_t> steps, std::optional<double> duration_s) {
  if (!steps && !duration_s) return invalid("ControlLoop::run: give steps or duration_s");
  if (duration_s && !(*duration_s >= 0)) return invalid("ControlLoop::run: duration_s must be >= 0");
  const auto period_ns = static_cast<std::int64_t>(std::llround(1e9 / options_.rate_hz));
  // A duration past the int64 ns range is as good as none.
  const std::int64_t limit_ns = duration_s && *duration_s * 1e9 < 9e18 ? static_cast<std::int64_t>(*duration_s * 1e9)
                                                                       : std::numeric_limits<std::int64_t>::max();
  const std::int64_t start = mono_now();
  std::int64_t tick = start;
  std::uint64_t done = 0;
  while ((!steps || done < *steps) && tick - start < limit_ns) {
    act(step(observe));
    ++done;
    tick += period_ns;
    const std::int64_t wait = tick - mono_now();
    if (wait > 0) {
      options_.sleep(wait);
    } else if (wait < -period_ns) {
      // A whole period late: restart the schedule instead of bursting to catch up (a robot
      // executes one action per period, not several at once).
      ++stats_.overruns;
      tick = mono_now();
    }
  }
  return stats_;
}

}  // namespace inferential

// The robot side of chunked policies (docs/protocol.md §14): a queue of future
// actions, one per control step, merged across overlapping chunks. The same
// semantics as ActionChunkQueue in the Python and Rust clients.
//
// A step is executed at most once, steps only move forward, an expired action is
// never returned, and every pop() that returns nothing is counted as exactly one
// underrun or one hold. Not thread-safe: a control loop owns its queue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string_view>
#include <type_traits>
#include <vector>

#include "inferential/errors.hpp"
#include "inferential/reply.hpp"
#include "inferential/wire.hpp"

namespace inferential {

// How a row merges with the action already queued for its step.
enum class ChunkBlend {
  latest,       // the new row replaces the old action
  average,      // the mean of every row proposed for the step
  exponential,  // new_weight * new + (1 - new_weight) * old
  custom,       // ChunkQueueOptions::blend_function(old, new)
};

// "latest", "average", "exponential", "custom".
const char* chunk_blend_name(ChunkBlend blend) noexcept;
// The blend of a name; empty for an unknown one ("custom" included: it needs a function).
std::optional<ChunkBlend> chunk_blend_from_name(std::string_view name) noexcept;

// A user blend: the action for a step from the one queued and a new row (both of the
// chunk's row width; the result must have that width too).
using ChunkBlendFunction =
    std::function<std::vector<double>(const std::vector<double>& old_action, const std::vector<double>& new_row)>;
// A wall clock in Unix ns, compared with valid_until_ns.
using ChunkClock = std::function<std::int64_t()>;

struct ChunkQueueOptions {
  ChunkBlend blend = ChunkBlend::latest;
  ChunkBlendFunction blend_function;  // required with ChunkBlend::custom, refused otherwise
  double new_weight = 0.7;            // the new row's weight with exponential, in (0, 1]
  std::int64_t start_step = 0;        // the control step the first pop() serves
  // Unix ns; empty = the system clock. Injected by tests and simulations. If it throws,
  // the time is taken as unknown and every action with a validity counts as expired
  // (the robot refuses an action it cannot vouch for).
  ChunkClock clock;
};

// executed: actions returned by pop(). underruns: steps with no action queued.
// held: steps whose action had expired. merged: rows blended into a queued action.
// late: rows dropped because their step had already been served.
struct ChunkQueueStats {
  std::uint64_t executed = 0;
  std::uint64_t underruns = 0;
  std::uint64_t held = 0;
  std::uint64_t merged = 0;
  std::uint64_t late = 0;
};

class ActionChunkQueue {
 public:
  // invalid_argument when new_weight is outside (0, 1] (NaN included), when the blend
  // is custom without a function (or has a function but is not custom), or when the
  // blend is not one of the enumerators.
  [[nodiscard]] static Result<ActionChunkQueue> create(ChunkQueueOptions options = {}) noexcept;

  // Queues a chunk of `values.size() / row_width` rows in C order (e.g. an [H, J]
  // tensor, row_width = J): row i is the action for step start_step + i. Rows for steps
  // already served are dropped (counted late); a row for a step that holds an action is
  // merged into it with the blend (counted merged). valid_until_ns (Unix ns; empty =
  // never expires) applies to every row and to every action a row merges into: the newer
  // chunk vouches for the blended action. Returns the rows queued or merged.
  //
  // invalid_argument, with the queue unchanged, when row_width is 0, the values do not
  // split into rows of row_width, a row's width differs from the action it would merge
  // into, the chunk would run past the last representable step, or the blend function
  // throws or returns an action of another width. Any element type the client reads
  // from a reply tensor works (float, double, integers, BFloat16); values become double.
  template <class T>
  Result<std::size_t> add(Span<T> values, std::size_t row_width, std::int64_t start_step,
                          std::optional<std::int64_t> valid_until_ns = std::nullopt) noexcept;
  Result<std::size_t> add(Span<double> values, std::size_t row_width, std::int64_t start_step,
                          std::optional<std::int64_t> valid_until_ns = std::nullopt) noexcept;
  // The same with one vector per row (every row of the same, non-zero width).
  Result<std::size_t> add(const std::vector<std::vector<double>>& rows, std::int64_t start_step,
                          std::optional<std::int64_t> valid_until_ns = std::nullopt) noexcept;

  // Queues the `actions` tensor of a chunked reply ([H, ...]: H rows, one per step, each
  // row the remaining dimensions flattened; any numeric dtype). Row 0 is for the reply's
  // first_action_step (the observation's control_step, echoed) or, when the reply has none
  // (a server that does not echo it, an observation sent without control_step), for
  // `start_step`; the rows expire at the reply's valid_until_ns. Returns the rows queued
  // or merged.
  //
  // invalid_argument, with the queue unchanged, when the reply has no `actions` tensor, it
  // is 0-d, empty per row, of a non-numeric dtype, when neither the reply nor the caller
  // gives a start step, when first_action_step is past the last representable step, or for
  // any reason add() refuses a chunk.
  Result<std::size_t> add_reply(const Reply& reply,
                                std::optional<std::int64_t> start_step = std::nullopt) noexcept;
  // The name the Python client uses.
  Result<std::size_t> add_result(const Reply& reply, std::optional<std::int64_t> start_step = std::nullopt) noexcept {
    return add_reply(reply, start_step);
  }

  // The action for step next_step(), then next_step() moves on by one whatever the
  // outcome. Empty when no action is queued (an underrun) or when it has expired (a hold:
  // now > valid_until_ns).
  std::optional<std::vector<double>> pop() noexcept;

  // Valid actions queued for consecutive steps from next_step(): what the robot sends as
  // actions_remaining with its next observation (saturates at the field's maximum).
  std::uint32_t actions_remaining() const noexcept;

  // The valid actions queued for consecutive steps from next_step() (at most `limit`),
  // in step order, without executing them; empty when there are none. A policy doing
  // real-time chunking receives them with the next observation (the prefix it must keep).
  // `internal` only when out of memory.
  Result<std::vector<std::vector<double>>> peek(
      std::size_t limit = std::numeric_limits<std::size_t>::max()) const noexcept;

  // The control step the next pop() serves.
  std::int64_t next_step() const noexcept { return next_step_; }
  const ChunkQueueStats& stats() const noexcept { return stats_; }
  // Actions queued (valid or not, consecutive or not).
  std::size_t size() const noexcept { return slots_.size(); }
  bool empty() const noexcept { return slots_.empty(); }
  // Forgets every queued action (e.g. after an emergency stop); steps and counters stay.
  void clear() noexcept { slots_.clear(); }

 private:
  struct Slot {
    std::vector<double> action;
    std::uint64_t count = 1;  // rows proposed for this step (the average's divisor)
    std::optional<std::int64_t> valid_until_ns;
  };

  explicit ActionChunkQueue(ChunkQueueOptions options);
  std::int64_t now() const noexcept;
  bool expired(const Slot& slot, std::int64_t now_ns) const noexcept {
    return slot.valid_until_ns && now_ns > *slot.valid_until_ns;
  }

  ChunkBlend blend_;
  ChunkBlendFunction blend_function_;
  double new_weight_;
  ChunkClock clock_;
  std::int64_t next_step_;
  std::map<std::int64_t, Slot> slots_;  // only steps >= next_step_
  ChunkQueueStats stats_;
};

template <class T>
Result<std::size_t> ActionChunkQueue::add(Span<T> values, std::size_t row_width, std::int64_t start_step,
                                          std::optional<std::int64_t> valid_until_ns) noexcept {
  static_assert(std::is_arithmetic_v<T> || std::is_same_v<T, BFloat16>,
                "chunk values must be arithmetic or BFloat16 (convert Float16 first)");
  std::vector<double> converted;
  try {
    converted.reserve(values.size());
    for (const T& v : values) {
      if constexpr (std::is_same_v<T, BFloat16>) {
        converted.push_back(static_cast<double>(v.to_float()));
      } else {
        converted.push_back(static_cast<double>(v));
      }
    }
  } catch (...) {  // only std::bad_alloc can get here
    return Error{ErrorKind::internal, 0, false, 0, 0, {}, "out of memory converting a chunk"};
  }
  return add(Span<double>(converted.data(), converted.size()), row_width, start_step, valid_until_ns);
}

}  // namespace inferential

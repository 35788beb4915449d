#include "inferential/chunks.hpp"

#include <chrono>
#include <cmath>
#include <algorithm>
#include <exception>
#include <type_traits>
#include <limits>
#include <string>
#include <utility>

namespace inferential {

namespace {

constexpr std::int64_t kMaxStep = std::numeric_limits<std::int64_t>::max();

Error invalid(std::string message) {
  return Error{ErrorKind::invalid_argument, 0, false, 0, 0, {}, std::move(message)};
}
Error out_of_memory() { return Error{ErrorKind::internal, 0, false, 0, 0, {}, "out of memory in ActionChunkQueue"}; }

// IEEE binary16 bits to double (subnormals, infinities and NaN included).
double half_to_double(std::uint16_t bits) {
  const int exponent = (bits >> 10) & 0x1F;
  const int mantissa = bits & 0x3FF;
  double magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<double>(mantissa), -24);
  } else if (exponent == 0x1F) {
    magnitude = mantissa ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else {
    magnitude = std::ldexp(static_cast<double>(mantissa | 0x400), exponent - 25);
  }
  return (bits & 0x8000) ? -magnitude : magnitude;
}

// The elements of a reply tensor as doubles; empty for a dtype that is not a number.
template <class T>
std::optional<std::vector<double>> widen(const ReplyTensor& t) {
  auto values = t.values<T>();
  if (!values) return std::nullopt;
  std::vector<double> out;
  out.reserve(values->size());
  for (const T& v : *values) {
    if constexpr (std::is_same_v<T, BFloat16>) {
      out.push_back(static_cast<double>(v.to_float()));
    } else if constexpr (std::is_same_v<T, Float16>) {
      out.push_back(half_to_double(v.bits));
    } else {
      out.push_back(static_cast<double>(v));
    }
  }
  return out;
}

std::optional<std::vector<double>> tensor_as_doubles(const ReplyTensor& t) {
  switch (t.dtype()) {
    case DType::float16: return widen<Float16>(t);
    case DType::float32: return widen<float>(t);
    case DType::float64: return widen<double>(t);
    case DType::bfloat16: return widen<BFloat16>(t);
    case DType::uint8: return widen<std::uint8_t>(t);
    case DType::int8: return widen<std::int8_t>(t);
    case DType::int16: return widen<std::int16_t>(t);
    case DType::uint16: return widen<std::uint16_t>(t);
    case DType::int32: return widen<std::int32_t>(t);
    case DType::uint32: return widen<std::uint32_t>(t);
    case DType::int64: return widen<std::int64_t>(t);
    case DType::uint64: return widen<std::uint64_t>(t);
    case DType::boolean: {  // read as bytes: a byte other than 0/1 is not a valid C++ bool
      std::vector<double> out;
      out.reserve(t.size_bytes());
      for (std::size_t i = 0; i < t.size_bytes(); ++i) out.push_back(t.data()[i] != std::byte{0} ? 1.0 : 0.0);
      return out;
    }
    default: return std::nullopt;  // an unknown dtype
  }
}

}  // namespace

const char* chunk_blend_name(ChunkBlend blend) noexcept {
  switch (blend) {
    case ChunkBlend::latest: return "latest";
    case ChunkBlend::average: return "average";
    case ChunkBlend::exponential: return "exponential";
    case ChunkBlend::custom: return "custom";
  }
  return "unknown";
}

std::optional<ChunkBlend> chunk_blend_from_name(std::string_view name) noexcept {
  if (name == "latest") return ChunkBlend::latest;
  if (name == "average") return ChunkBlend::average;
  if (name == "exponential") return ChunkBlend::exponential;
  return std::nullopt;
}

Result<ActionChunkQueue> ActionChunkQueue::create(ChunkQueueOptions options) noexcept {
  switch (options.blend) {
    case ChunkBlend::latest:
    case ChunkBlend::average:
    case ChunkBlend::exponential:
      if (options.blend_function)
        return invalid(std::string("ChunkQueueOptions.blend_function is set but blend is ") +
                       chunk_blend_name(options.blend) + " (use ChunkBlend::custom)");
      break;
    case ChunkBlend::custom:
      if (!options.blend_function) return invalid("ChunkQueueOptions.blend is custom but blend_function is empty");
      break;
    default:
      return invalid("ChunkQueueOptions.blend must be latest, average, exponential or custom, got " +
                     std::to_string(static_cast<int>(options.blend)));
  }
  // Written so that NaN fails too.
  if (!(options.new_weight > 0.0 && options.new_weight <= 1.0))
    return invalid("ChunkQueueOptions.new_weight must be in (0, 1], got " + std::to_string(options.new_weight));
  try {
    return ActionChunkQueue(std::move(options));
  } catch (...) {
    return out_of_memory();
  }
}

ActionChunkQueue::ActionChunkQueue(ChunkQueueOptions options)
    : blend_(options.blend),
      blend_function_(std::move(options.blend_function)),
      new_weight_(options.new_weight),
      clock_(std::move(options.clock)),
      next_step_(options.start_step) {}

std::int64_t ActionChunkQueue::now() const noexcept {
  if (!clock_)
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  try {
    return clock_();
  } catch (...) {
    // An unknown time: every action with a validity counts as expired, so pop() holds
    // rather than execute an action nothing vouches for any more.
    return kMaxStep;
  }
}

Result<std::size_t> ActionChunkQueue::add(Span<double> values, std::size_t row_width, std::int64_t start_step,
                                          std::optional<std::int64_t> valid_until_ns) noexcept {
  if (row_width == 0) return invalid("ActionChunkQueue::add: row_width is 0");
  if (values.size() % row_width != 0)
    return invalid("ActionChunkQueue::add: " + std::to_string(values.size()) + " values do not split into rows of " +
                   std::to_string(row_width));
  const std::size_t rows = values.size() / row_width;
  if (rows == 0) return std::size_t{0};
  // Steps run up to kMaxStep - 1: next_step() can then always move past a served step,
  // so none is ever served twice. Modular arithmetic gives kMaxStep - start_step exactly
  // (it lies in [0, 2^64) for any start_step).
  const std::uint64_t headroom = static_cast<std::uint64_t>(kMaxStep) - static_cast<std::uint64_t>(start_step);
  if (static_cast<std::uint64_t>(rows) > headroom)
    return invalid("ActionChunkQueue::add: a chunk of " + std::to_string(rows) + " rows from step " +
                   std::to_string(start_step) + " runs past the last step");

  // Everything that can fail happens before the queue changes: new steps are built in
  // `fresh` and blended actions in `merges`; committing them below cannot fail.
  std::map<std::int64_t, Slot> fresh;
  std::vector<std::pair<Slot*, std::vector<double>>> merges;
  std::uint64_t late = 0;
  try {
    for (std::size_t i = 0; i < rows; ++i) {
      const std::int64_t step = start_step + static_cast<std::int64_t>(i);
      if (step < next_step_) {
        ++late;
        continue;
      }
      const double* row = values.data() + i * row_width;
      auto found = slots_.find(step);
      if (found == slots_.end()) {
        fresh.emplace(step, Slot{std::vector<double>(row, row + row_width), 1, valid_until_ns});
        continue;
      }
      Slot& slot = found->second;
      if (slot.action.size() != row_width)
        return invalid("ActionChunkQueue::add: a row of " + std::to_string(row_width) + " values for step " +
                       std::to_string(step) + " cannot merge into its queued action of " +
                       std::to_string(slot.action.size()));
      std::vector<double> merged(row_width);
      switch (blend_) {
        case ChunkBlend::latest:
          merged.assign(row, row + row_width);
          break;
        case ChunkBlend::average: {
          // The running mean: after n rows, old + (new - old) / (n + 1).
          const double n = static_cast<double>(slot.count);
          for (std::size_t j = 0; j < row_width; ++j)
            merged[j] = slot.action[j] + (row[j] - slot.action[j]) / (n + 1.0);
          break;
        }
        case ChunkBlend::exponential:
          for (std::size_t j = 0; j < row_width; ++j)
            merged[j] = new_weight_ * row[j] + (1.0 - new_weight_) * slot.action[j];
          break;
        case ChunkBlend::custom: {
          std::vector<double> new_row(row, row + row_width);
          try {
            merged = blend_function_(slot.action, new_row);
          } catch (const std::bad_alloc&) {
            throw;
          } catch (const std::exception& e) {
            return invalid(std::string("ActionChunkQueue::add: the blend function threw: ") + e.what());
          } catch (...) {
            return invalid("ActionChunkQueue::add: the blend function threw");
          }
          if (merged.size() != row_width)
            return invalid("ActionChunkQueue::add: the blend function returned " + std::to_string(merged.size()) +
                           " values for rows of " + std::to_string(row_width));
          break;
        }
      }
      merges.emplace_back(&slot, std::move(merged));
    }
  } catch (...) {  // std::bad_alloc: nothing was changed
    return out_of_memory();
  }

  const std::size_t queued = fresh.size() + merges.size();
  for (auto& [slot, action] : merges) {
    slot->action = std::move(action);
    if (slot->count < std::numeric_limits<std::uint64_t>::max()) ++slot->count;
    // The newer chunk vouches for the blended action, whatever the old validity was.
    slot->valid_until_ns = valid_until_ns;
  }
  stats_.merged += merges.size();
  stats_.late += late;
  slots_.merge(fresh);  // moves the nodes: no allocation, no copy
  return queued;
}

Result<std::size_t> ActionChunkQueue::add(const std::vector<std::vector<double>>& rows, std::int64_t start_step,
                                          std::optional<std::int64_t> valid_until_ns) noexcept {
  if (rows.empty()) return std::size_t{0};
  const std::size_t width = rows.front().size();
  for (std::size_t i = 0; i < rows.size(); ++i)
    if (rows[i].size() != width)
      return invalid("ActionChunkQueue::add: row " + std::to_string(i) + " has " + std::to_string(rows[i].size()) +
                     " values, row 0 has " + std::to_string(width));
  if (width == 0) return invalid("ActionChunkQueue::add: rows of 0 values");
  std::vector<double> flat;
  try {
    flat.reserve(rows.size() * width);
    for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  } catch (...) {
    return out_of_memory();
  }
  return add(Span<double>(flat.data(), flat.size()), width, start_step, valid_until_ns);
}

Result<std::size_t> ActionChunkQueue::add_reply(const Reply& reply, std::optional<std::int64_t> start_step) noexcept {
  const ReplyTensor* actions = reply.tensor("actions");
  if (!actions) return invalid("ActionChunkQueue::add_reply: the reply has no 'actions' tensor");
  const auto& shape = actions->shape();
  if (shape.empty()) return invalid("ActionChunkQueue::add_reply: 'actions' is 0-d (its rows are steps)");
  std::int64_t first;
  if (reply.first_action_step) {
    if (*reply.first_action_step > static_cast<std::uint64_t>(kMaxStep))
      return invalid("ActionChunkQueue::add_reply: first_action_step " + std::to_string(*reply.first_action_step) +
                     " is past the last step");
    first = static_cast<std::int64_t>(*reply.first_action_step);
  } else if (start_step) {
    first = *start_step;
  } else {
    return invalid("ActionChunkQueue::add_reply: the reply carries no first_action_step: pass start_step");
  }
  // A validity past the int64 range is centuries away: as good as none.
  std::optional<std::int64_t> until;
  if (reply.valid_until_ns)
    until = static_cast<std::int64_t>(std::min<std::uint64_t>(*reply.valid_until_ns, static_cast<std::uint64_t>(kMaxStep)));
  if (shape[0] == 0) return std::size_t{0};
  const std::size_t rows = static_cast<std::size_t>(shape[0]);
  if (actions->element_count() % rows != 0 || actions->element_count() / rows == 0)
    return invalid("ActionChunkQueue::add_reply: 'actions' has rows of 0 values");
  const std::size_t width = actions->element_count() / rows;
  std::optional<std::vector<double>> values;
  try {
    values = tensor_as_doubles(*actions);
  } catch (...) {
    return out_of_memory();
  }
  if (!values)
    return invalid(std::string("ActionChunkQueue::add_reply: 'actions' is not numeric (dtype ") +
                   std::to_string(static_cast<int>(actions->dtype())) + ")");
  return add(Span<double>(values->data(), values->size()), width, first, until);
}

std::optional<std::vector<double>> ActionChunkQueue::pop() noexcept {
  const std::int64_t step = next_step_;
  // kMaxStep itself never holds an action (add() refuses it), so stopping there
  // serves nothing twice.
  if (next_step_ < kMaxStep) ++next_step_;
  auto found = slots_.find(step);
  if (found == slots_.end()) {
    ++stats_.underruns;
    return std::nullopt;
  }
  Slot slot = std::move(found->second);
  slots_.erase(found);
  // The clock is read only for an action that can expire.
  if (slot.valid_until_ns && expired(slot, now())) {
    ++stats_.held;
    return std::nullopt;
  }
  ++stats_.executed;
  return std::optional<std::vector<double>>(std::move(slot.action));
}

std::uint32_t ActionChunkQueue::actions_remaining() const noexcept {
  const std::int64_t now_ns = now();
  std::uint32_t count = 0;
  std::int64_t expected = next_step_;
  for (auto it = slots_.find(next_step_); it != slots_.end() && it->first == expected; ++it, ++expected) {
    if (expired(it->second, now_ns)) break;
    if (count == std::numeric_limits<std::uint32_t>::max()) break;
    ++count;
  }
  return count;
}

Result<std::vector<std::vector<double>>> ActionChunkQueue::peek(std::size_t limit) const noexcept {
  const std::int64_t now_ns = now();
  std::vector<std::vector<double>> out;
  try {
    std::int64_t expected = next_step_;
    for (auto it = slots_.find(next_step_);
         out.size() < limit && it != slots_.end() && it->first == expected && !expired(it->second, now_ns);
         ++it, ++expected)
      out.push_back(it->second.action);
  } catch (...) {
    return out_of_memory();
  }
  return out;
}

}  // namespace inferential

// A reply from the server: status, ids, timing and tensor views.
//
// Tensor views point into the received ZMQ frames, which the Reply keeps alive
// (shared ownership): copying a Reply or a ReplyTensor is cheap and every copy
// stays valid as long as it lives, whatever happens to the Connection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "inferential/wire.hpp"

namespace inferential {

// Server-side timing of one request, in milliseconds (ServerTiming in the proto).
struct Timing {
  float queue_wait_ms = 0;
  float inference_ms = 0;
  float total_ms = 0;
  std::uint32_t batch_size = 0;
};

class ReplyTensor {
 public:
  ReplyTensor() = default;
  ReplyTensor(std::string key, DType dtype, std::vector<std::int64_t> shape, const std::byte* data,
              std::size_t size_bytes, bool aligned, std::shared_ptr<const void> owner)
      : key_(std::move(key)),
        dtype_(dtype),
        shape_(std::move(shape)),
        data_(data),
        size_(size_bytes),
        aligned_(aligned),
        owner_(std::move(owner)) {}

  const std::string& key() const noexcept { return key_; }
  DType dtype() const noexcept { return dtype_; }
  const std::vector<std::int64_t>& shape() const noexcept { return shape_; }
  // Number of elements (product of the shape; 1 for a 0-d tensor).
  std::size_t element_count() const noexcept { return size_ / item_size(dtype_).value_or(1); }
  // The tensor's little-endian C-order bytes.
  const std::byte* data() const noexcept { return data_; }
  std::size_t size_bytes() const noexcept { return size_; }
  // True when data() points into the received frame (no copy was made). Frames
  // from libzmq are only 4-byte aligned: a tensor whose bytes were not aligned
  // for its item size was copied into aligned memory at decode time.
  bool aligned() const noexcept { return aligned_; }

  // Typed elements when T is this tensor's element type (float for FLOAT32,
  // BFloat16 for BFLOAT16, bool for BOOL, ...); empty otherwise. The storage is
  // always aligned for T, so the view is safe to read.
  template <class T>
  std::optional<Span<T>> values() const noexcept {
    if (dtype_of_v<T> != dtype_) return std::nullopt;
    return Span<T>(static_cast<const T*>(static_cast<const void*>(data_)), size_ / sizeof(T));
  }

  // Copies the elements out (any alignment, any T of the right dtype).
  template <class T>
  std::optional<std::vector<T>> to_vector() const {
    if (dtype_of_v<T> != dtype_) return std::nullopt;
    std::vector<T> out(size_ / sizeof(T));
    if (size_) std::memcpy(out.data(), data_, size_);
    return out;
  }

 private:
  std::string key_;
  DType dtype_ = DType::unspecified;
  std::vector<std::int64_t> shape_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool aligned_ = true;
  std::shared_ptr<const void> owner_;  // the received frames (or the aligned copy)
};

struct Reply {
  int status = status::ok;  // STATUS_UNSPECIFIED from a 1.x server is reported as OK
  std::uint64_t request_id = 0;
  std::string model_id;
  std::string client_id;
  std::uint32_t protocol_version = 0;
  bool retryable = false;  // the reply's field (v2), else the status table
  std::string error;       // the server's reason when status != OK
  std::uint32_t retry_after_ms = 0;
  std::optional<Timing> timing;
  float inference_latency_ms = 0;
  std::string response_id;
  std::uint64_t timestamp_ns = 0;
  std::uint64_t observation_timestamp_ns = 0;
  // Client-measured, from send to receipt; empty when not measured (codec only).
  std::optional<double> round_trip_ms;
  std::map<std::string, std::string> metadata;
  std::vector<ReplyTensor> tensors;

  // Action chunks (docs/protocol.md §3, §14). The observation's control_step, echoed: row 0
  // of the `actions` tensor is the action for this step; empty when the observation sent none
  // (or the server does not echo it).
  std::optional<std::uint64_t> first_action_step;
  float action_period_ms = 0;       // the control period the server assumed; 0 without a rate
  float predicted_delay_steps = 0;  // the inference delay the model was told, in steps
  float actual_delay_steps = 0;     // arrival at the server -> reply sent, in steps
  // Unix ns after which these actions must not be executed; empty when the reply sets none (0).
  std::optional<std::uint64_t> valid_until_ns;

  bool is_ok() const noexcept { return status == status::ok; }
  // The tensor with this key, or nullptr.
  const ReplyTensor* tensor(const std::string& key) const noexcept;
};

}  // namespace inferential

// The codec: an observation to the frames a DEALER sends, and received frames to
// a validated Reply. Pure functions over bytes (no socket, no clock), so they are
// tested without a server and fuzzed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "inferential/errors.hpp"
#include "inferential/reply.hpp"
#include "inferential/wire.hpp"

namespace inferential {

// One input tensor of an Observation. The bytes are the caller's: without an owner
// they are read (and copied into the message) during observe()/request(), so they
// only need to outlive that call; with an owner they are handed to libzmq without
// a copy and the owner is released when libzmq is done with them.
struct TensorInput {
  std::string key;
  DType dtype = DType::unspecified;
  std::vector<std::int64_t> shape;
  const std::byte* data = nullptr;
  std::size_t size_bytes = 0;
  std::shared_ptr<const void> owner;
};

// What one observation carries besides the connection's and model's settings.
// Builder-style setters return *this; runtime shapes are plain vectors.
class Observation {
 public:
  // Copied when sent. data holds size_bytes of little-endian C-order elements.
  Observation& tensor(std::string key, DType dtype, std::vector<std::int64_t> shape, const void* data,
                      std::size_t size_bytes);
  template <class T>
  Observation& tensor(std::string key, std::vector<std::int64_t> shape, const T* values, std::size_t count) {
    return tensor(std::move(key), dtype_of_v<T>, std::move(shape), values, count * sizeof(T));
  }
  template <class T>
  Observation& tensor(std::string key, std::vector<std::int64_t> shape, const std::vector<T>& values) {
    static_assert(!std::is_same_v<T, bool>, "std::vector<bool> is packed: pass a bool array or uint8_t bytes");
    return tensor(std::move(key), dtype_of_v<T>, std::move(shape), values.data(), values.size() * sizeof(T));
  }
  // Sent without a copy: owner keeps data alive until libzmq has sent it (possibly
  // after observe() returns, released on libzmq's I/O thread). Do not write into it meanwhile.
  Observation& tensor_shared(std::string key, DType dtype, std::vector<std::int64_t> shape,
                             std::shared_ptr<const void> owner, const void* data, std::size_t size_bytes);
  template <class T>
  Observation& tensor_shared(std::string key, std::vector<std::int64_t> shape,
                             std::shared_ptr<const std::vector<T>> values) {
    static_assert(!std::is_same_v<T, bool>, "std::vector<bool> is packed");
    const void* data = values ? values->data() : nullptr;
    std::size_t size = values ? values->size() * sizeof(T) : 0;
    return tensor_shared(std::move(key), dtype_of_v<T>, std::move(shape), std::move(values), data, size);
  }

  Observation& metadata(std::string key, std::string value);
  Observation& urgency(float value) { urgency_ = value; return *this; }
  Observation& steps_remaining(std::uint32_t value) { steps_remaining_ = value; return *this; }
  // Overrides the model handle's priority (0 is the highest).
  Observation& priority(std::uint32_t value) { priority_ = value; return *this; }
  Observation& deadline_ns(std::uint64_t value) { deadline_ns_ = value; return *this; }
  Observation& actions_remaining(std::uint32_t value) { actions_remaining_ = value; return *this; }
  Observation& control_rate_hz(float value) { control_rate_hz_ = value; return *this; }
  // The robot's control step when this observation was taken (action chunks, docs/protocol.md
  // §3): the server echoes it as the reply's first_action_step.
  Observation& control_step(std::uint64_t value) { control_step_ = value; return *this; }

  const std::vector<TensorInput>& tensors() const noexcept { return tensors_; }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  float urgency() const noexcept { return urgency_; }
  std::optional<std::uint32_t> steps_remaining() const noexcept { return steps_remaining_; }
  std::optional<std::uint32_t> priority() const noexcept { return priority_; }
  std::optional<std::uint64_t> deadline_ns() const noexcept { return deadline_ns_; }
  std::optional<std::uint32_t> actions_remaining() const noexcept { return actions_remaining_; }
  std::optional<float> control_rate_hz() const noexcept { return control_rate_hz_; }
  std::optional<std::uint64_t> control_step() const noexcept { return control_step_; }

 private:
  std::vector<TensorInput> tensors_;
  std::map<std::string, std::string> metadata_;
  float urgency_ = 0.0f;
  std::optional<std::uint32_t> steps_remaining_;
  std::optional<std::uint32_t> priority_;
  std::optional<std::uint64_t> deadline_ns_;
  std::optional<std::uint32_t> actions_remaining_;
  std::optional<float> control_rate_hz_;
  std::optional<std::uint64_t> control_step_;
};

// Everything an encoded observation needs besides the Observation itself.
struct EnvelopeFields {
  std::string client_id;
  std::string client_type;
  std::string model_id;
  std::uint64_t request_id = 0;
  float latency_budget_ms = 0;
  std::uint32_t priority = 1;  // used when the Observation sets none
  std::string auth_token;
  std::uint64_t timestamp_ns = 0;
  bool single_payload_frame = false;
  // A describe request (docs/protocol.md §12): empty model_id, the describe metadata entry added.
  bool describe = false;
};

// The metadata key that makes an observation a describe request.
inline constexpr const char* kDescribeKey = "inferential.describe";

// The frames ["", envelope, payload...] a DEALER sends. Each tensor starts at an
// offset that is a multiple of its item size within its frame (zero padding in
// between); tensors up to kSmallTensorBytes share one frame, larger ones get their
// own. Every limit is checked first: a violation is an invalid_argument error.
Result<std::vector<zmq::message_t>> encode_observation(const EnvelopeFields& fields, const Observation& obs,
                                                       const Limits& limits) noexcept;

// What decoding one received message gave. `header_parsed` says whether the
// envelope was a ModelResponse at all (then the header fields are filled, even
// when the tensors broke a rule); `reply` is set only for a fully valid message;
// otherwise `malformed` says why.
struct Decoded {
  bool header_parsed = false;
  std::uint64_t request_id = 0;
  std::string model_id;
  std::uint32_t protocol_version = 0;
  int status = 0;
  std::string error;
  std::optional<Reply> reply;
  std::string malformed;
};

// Validates every rule of docs/protocol.md §2, §4 and §7 for frames as the DEALER
// receives them (delimiter first). Never throws, whatever the bytes.
Decoded decode_reply(std::vector<zmq::message_t> frames, const Limits& limits) noexcept;

// The error a reply with this status raises (empty for OK / STATUS_UNSPECIFIED).
std::optional<Error> error_for_reply(const Reply& reply);

}  // namespace inferential

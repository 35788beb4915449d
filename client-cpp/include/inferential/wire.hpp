// Wire-level vocabulary: dtypes, statuses, limits and the small value types the
// rest of the API uses. Pure: no sockets, no protobuf.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "inferential/wire_tables.hpp"

namespace inferential {

inline constexpr std::uint32_t kProtocolVersion = 2;

// The proto's DType enum (values are the wire numbers).
enum class DType : int {
  unspecified = 0,
  float16 = 1,
  float32 = 2,
  float64 = 3,
  bfloat16 = 4,
  uint8 = 5,
  int32 = 6,
  int64 = 7,
  boolean = 8,
  int8 = 9,
  int16 = 10,
  uint16 = 11,
  uint32 = 12,
  uint64 = 13,
};

// The proto's Status enum. A reply may carry a value not listed here (a newer
// server): Reply::status is therefore a plain int.
namespace status {
inline constexpr int unspecified = 0;
inline constexpr int ok = 1;
inline constexpr int invalid_request = 2;
inline constexpr int unknown_model = 3;
inline constexpr int model_error = 4;
inline constexpr int expired = 5;
inline constexpr int queue_full = 6;
inline constexpr int deadline_unmeetable = 7;
inline constexpr int superseded = 8;
inline constexpr int unauthenticated = 9;
inline constexpr int shutting_down = 10;
inline constexpr int cancelled = 11;
}  // namespace status

// "FLOAT32"; "DType(99)" for a value that has no name.
std::string dtype_name(DType dtype);
// "QUEUE_FULL"; "Status(99)" for a value that has no name.
std::string status_name(int status);
// The DType of a proto name ("FLOAT32"), empty when there is none.
std::optional<DType> dtype_from_name(std::string_view name);
// The Status value of a proto name ("QUEUE_FULL"), empty when there is none.
std::optional<int> status_from_name(std::string_view name);

// Bytes per element; empty for DTYPE_UNSPECIFIED and unknown values.
inline std::optional<std::size_t> item_size(DType dtype) {
  return wire::item_size(static_cast<int>(dtype));
}

// IEEE binary16 and bfloat16 elements, held as their raw little-endian bits.
struct Float16 {
  std::uint16_t bits = 0;
};
struct BFloat16 {
  std::uint16_t bits = 0;
  // Round to nearest even; NaN becomes the canonical 0x7FC0.
  static BFloat16 from_float(float value) noexcept;
  float to_float() const noexcept;
};

// The DType of a C++ element type (only the exact wire types are mapped).
template <class T>
struct dtype_of;
template <> struct dtype_of<Float16> { static constexpr DType value = DType::float16; };
template <> struct dtype_of<float> { static constexpr DType value = DType::float32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::float64; };
template <> struct dtype_of<BFloat16> { static constexpr DType value = DType::bfloat16; };
template <> struct dtype_of<std::uint8_t> { static constexpr DType value = DType::uint8; };
template <> struct dtype_of<std::int32_t> { static constexpr DType value = DType::int32; };
template <> struct dtype_of<std::int64_t> { static constexpr DType value = DType::int64; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::boolean; };
template <> struct dtype_of<std::int8_t> { static constexpr DType value = DType::int8; };
template <> struct dtype_of<std::int16_t> { static constexpr DType value = DType::int16; };
template <> struct dtype_of<std::uint16_t> { static constexpr DType value = DType::uint16; };
template <> struct dtype_of<std::uint32_t> { static constexpr DType value = DType::uint32; };
template <> struct dtype_of<std::uint64_t> { static constexpr DType value = DType::uint64; };
template <class T>
inline constexpr DType dtype_of_v = dtype_of<T>::value;

static_assert(sizeof(Float16) == 2 && sizeof(BFloat16) == 2 && sizeof(bool) == 1,
              "the wire element types must have their wire sizes");

// Bounds enforced on outgoing observations and incoming replies (docs/protocol.md §7).
// Keep them equal to the server's.
struct Limits {
  std::size_t max_message_bytes = 64u * 1024u * 1024u;
  std::size_t max_tensors = 64;
  std::size_t max_payload_frames = 64;
  std::size_t max_dims = 8;
  std::size_t max_key_bytes = 256;  // tensor keys, metadata keys
  std::size_t max_id_bytes = 256;   // client id, model id
  std::size_t max_metadata_entries = 64;
  std::size_t max_metadata_value_bytes = 4096;
  std::size_t max_client_type_bytes = 256;
  std::size_t max_auth_token_bytes = 1024;
};

// Tensors of at most this many bytes are joined into one payload frame when
// sending (a frame costs more than copying a few hundred bytes).
inline constexpr std::size_t kSmallTensorBytes = 2048;

// Whether bytes are well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
bool is_valid_utf8(std::string_view text) noexcept;

// A read-only view of contiguous elements (C++17 has no std::span).
template <class T>
class Span {
 public:
  constexpr Span() noexcept = default;
  constexpr Span(const T* data, std::size_t size) noexcept : data_(data), size_(size) {}
  constexpr const T* data() const noexcept { return data_; }
  constexpr std::size_t size() const noexcept { return size_; }
  constexpr bool empty() const noexcept { return size_ == 0; }
  constexpr const T& operator[](std::size_t i) const noexcept { return data_[i]; }
  constexpr const T* begin() const noexcept { return data_; }
  constexpr const T* end() const noexcept { return data_ + size_; }

 private:
  const T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace inferential

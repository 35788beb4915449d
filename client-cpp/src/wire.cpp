#include "inferential/wire.hpp"

#include <cmath>
#include <cstring>

#include "inferential/reply.hpp"

namespace inferential {

std::string dtype_name(DType dtype) {
  const char* name = wire::dtype_name(static_cast<int>(dtype));
  if (name) return name;
  if (dtype == DType::unspecified) return "DTYPE_UNSPECIFIED";
  return "DType(" + std::to_string(static_cast<int>(dtype)) + ")";
}

std::string status_name(int status) {
  const char* name = wire::status_name(status);
  return name ? std::string(name) : "Status(" + std::to_string(status) + ")";
}

std::optional<DType> dtype_from_name(std::string_view name) {
  // The generated table is the only list of names: scan its (small) value range.
  for (int v = 1; v < 64; ++v) {
    const char* n = wire::dtype_name(v);
    if (n && name == n) return static_cast<DType>(v);
  }
  return std::nullopt;
}

std::optional<int> status_from_name(std::string_view name) {
  for (int v = 0; v < 64; ++v) {
    const char* n = wire::status_name(v);
    if (n && name == n) return v;
  }
  return std::nullopt;
}

BFloat16 BFloat16::from_float(float value) noexcept {
  if (std::isnan(value)) return BFloat16{0x7FC0};
  std::uint32_t u;
  std::memcpy(&u, &value, sizeof u);
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return BFloat16{static_cast<std::uint16_t>(rounded)};
}

float BFloat16::to_float() const noexcept {
  const std::uint32_t u = static_cast<std::uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

bool is_valid_utf8(std::string_view text) noexcept {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());  // bytes: any alignment
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    std::uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (std::size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

const ReplyTensor* Reply::tensor(const std::string& key) const noexcept {
  for (const auto& t : tensors)
    if (t.key() == key) return &t;
  return nullptr;
}

}  // namespace inferential

// Errors and the result type of the public API. Nothing in this library throws
// across its public functions: every fallible call returns a Result.
#pragma once

#include <cstdint>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace inferential {

// The same kinds, with the same names, as every other Inferential client
// (conformance/TESTEE.md). The first ten mirror a reply's non-OK status.
enum class ErrorKind {
  invalid_request,
  unknown_model,
  model_error,
  expired,
  queue_full,
  deadline_unmeetable,
  superseded,
  unauthenticated,
  shutting_down,
  cancelled,
  unknown_status,      // the reply carried a status value this client does not know
  timeout,             // request() got no reply in time
  server_unavailable,  // no connected server accepted the send within send_timeout_ms
  protocol,            // the reply to the waited-for request broke the protocol
  invalid_argument,    // refused locally before sending (bad option, shape, limit)
  closed,              // the connection is closed
  internal,            // an unexpected failure inside the library (e.g. out of memory)
};

// The stable lowercase name of a kind ("queue_full").
const char* error_kind_name(ErrorKind kind) noexcept;

// The kind a non-OK reply status maps to (unknown_status for values this client
// does not know). Only meaningful for statuses other than OK / STATUS_UNSPECIFIED.
ErrorKind error_kind_for_status(int status) noexcept;

struct Error {
  ErrorKind kind = ErrorKind::internal;
  int status = 0;               // the reply's Status value; 0 when the error is not a reply's
  bool retryable = false;       // a fresh observation can succeed with nothing else changed
  std::uint32_t retry_after_ms = 0;  // server hint (QUEUE_FULL, DEADLINE_UNMEETABLE); 0 = none
  std::uint64_t request_id = 0;  // the request it concerns, 0 when none
  std::string model_id;
  std::string message;

  // "queue_full: request 7 to model 'm': ...": for logs.
  std::string to_string() const;
};

// Either a T or an Error. [[nodiscard]]: ignoring a failure must be a visible choice.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  // Precondition: ok(). (Checked with std::get_if; a violated precondition is a
  // programming error, so it is not turned into a runtime Error.)
  T& value() & { return *std::get_if<0>(&v_); }
  const T& value() const& { return *std::get_if<0>(&v_); }
  T&& value() && { return std::move(*std::get_if<0>(&v_)); }
  T* operator->() { return std::get_if<0>(&v_); }
  const T* operator->() const { return std::get_if<0>(&v_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  // Precondition: !ok().
  const Error& error() const& { return *std::get_if<1>(&v_); }
  Error&& error() && { return std::move(*std::get_if<1>(&v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : err_(std::move(error)), failed_(true) {}  // NOLINT

  bool ok() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return ok(); }
  const Error& error() const& { return err_; }
  Error&& error() && { return std::move(err_); }

 private:
  Error err_;
  bool failed_ = false;
};

}  // namespace inferential

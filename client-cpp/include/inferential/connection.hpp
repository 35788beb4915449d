// A robot's connection to one Inferential server, and its model handles.
//
// Ownership: a Connection owns a heap state (socket, matcher) shared with the Model
// handles it creates, so moving the Connection never invalidates a Model, and a
// Model outliving its Connection fails cleanly with ErrorKind::closed. Destroying
// (or close()-ing) the Connection closes the socket at once (unsent messages are
// discarded).
//
// Thread-safety: every call on a Connection or any of its Models may come from any
// thread; calls are serialized by one mutex per connection. A waiting get_result()
// or request() releases that mutex at least every few milliseconds, but for the
// lowest latency use one Connection per thread. Replies (and their tensor views)
// are independent values, safe to hand to other threads.
//
// No function here throws: failures are returned as Result errors.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "inferential/envelope.hpp"
#include "inferential/errors.hpp"
#include "inferential/matching.hpp"
#include "inferential/options.hpp"
#include "inferential/reply.hpp"

namespace inferential {

namespace detail {
struct ConnectionState;
}

// Per-model settings of a handle.
struct ModelOptions {
  float latency_budget_ms = 50.0f;  // answer wanted within this long of arrival; 0 = server default
  std::uint32_t priority = 1;       // 0 is the highest
};

// Socket options as read back from the DEALER (for diagnostics and conformance).
struct SocketOptions {
  int reconnect_ivl = 0;
  int reconnect_ivl_max = 0;
  int heartbeat_ivl = 0;
  int heartbeat_timeout = 0;
  int tcp_keepalive = 0;
  int tcp_keepalive_idle = 0;
  int tcp_keepalive_intvl = 0;
  int tcp_keepalive_cnt = 0;
  int tcp_maxrt = 0;
  int immediate = 0;
  int sndtimeo = 0;
  int sndhwm = 0;
  int rcvhwm = 0;
  int linger = 0;
  std::int64_t maxmsgsize = 0;
  std::string routing_id;
};

class Model;

// What a server says about itself in answer to a describe request (docs/protocol.md §12).
struct ServerInfo {
  std::uint32_t protocol_version = 0;
  std::string server;  // e.g. "inferential-server/2.0.0"
  Limits limits;       // the limits in force on the server
  std::map<std::string, std::string> metadata;  // everything it sent
};

class Connection {
 public:
  // Validates the options, opens a DEALER and connects it (libzmq connects in the
  // background: create() succeeds while the server is down).
  [[nodiscard]] static Result<Connection> create(Options options) noexcept;

  Connection(Connection&&) noexcept = default;
  Connection& operator=(Connection&& other) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  // A handle for one model; handles of the same model_id share its replies.
  [[nodiscard]] Result<Model> model(std::string model_id, ModelOptions options = {}) const noexcept;

  // Asks the server for its protocol version and limits (a describe request, answered
  // without scheduling). A 1.x server never answers: timeout (default request_timeout_ms).
  [[nodiscard]] Result<ServerInfo> server_info(std::optional<int> timeout_ms = std::nullopt) const noexcept;

  // Counters (a snapshot).
  [[nodiscard]] Stats stats() const noexcept;
  [[nodiscard]] Result<SocketOptions> socket_options() const noexcept;
  const Options& options() const noexcept;
  // Close the socket at once; idempotent. Models of this connection then fail with closed.
  void close() noexcept;
  bool closed() const noexcept;

 private:
  explicit Connection(std::shared_ptr<detail::ConnectionState> state) noexcept : state_(std::move(state)) {}
  std::shared_ptr<detail::ConnectionState> state_;
};

class Model {
 public:
  // Send one observation; returns its request id. Fails with server_unavailable when
  // no connected server takes it within send_timeout_ms (nothing is queued for later),
  // invalid_argument when the observation breaks a rule or limit.
  [[nodiscard]] Result<std::uint64_t> observe(const Observation& observation) const noexcept;

  // The newest reply for this model not yet returned, waiting up to timeout_ms
  // (default Options::default_timeout_ms; 0 only checks). An empty optional means
  // nothing arrived in time. Older and replaced replies are dropped (stats: stale);
  // SUPERSEDED replies are skipped; any other non-OK reply is returned as its Error.
  [[nodiscard]] Result<std::optional<Reply>> get_result(std::optional<int> timeout_ms = std::nullopt) const noexcept;

  // observe() and wait for the reply to that very observation (default
  // Options::request_timeout_ms). Errors: timeout, the status's kind, protocol for a
  // malformed reply. Its reply never reaches get_result().
  [[nodiscard]] Result<Reply> request(const Observation& observation,
                                      std::optional<int> timeout_ms = std::nullopt) const noexcept;

  const std::string& model_id() const noexcept { return model_id_; }
  const ModelOptions& options() const noexcept { return options_; }

 private:
  friend class Connection;
  Model(std::shared_ptr<detail::ConnectionState> state, std::string model_id, ModelOptions options)
      : state_(std::move(state)), model_id_(std::move(model_id)), options_(options) {}
  Result<std::uint64_t> send(const Observation& observation, bool awaited) const;

  std::shared_ptr<detail::ConnectionState> state_;
  std::string model_id_;
  ModelOptions options_;
};

}  // namespace inferential

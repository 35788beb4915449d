// Request ids, the outstanding-request table and per-model delivery, as a pure
// state machine over (sends, replies, an injected clock): docs/protocol.md §5.
// Not thread-safe; the Connection serializes access to it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>

#include "inferential/envelope.hpp"
#include "inferential/errors.hpp"
#include "inferential/reply.hpp"

namespace inferential {

// Counters of one connection. sent: observations handed to the socket.
// send_failed: sends that failed (server unavailable). received: messages read.
// stale_dropped: replies older than one already delivered for the model, unread
// ones a newer reply replaced, and late replies to a request() that gave up.
// unknown_dropped: replies to no outstanding request (or the wrong model).
// malformed_dropped: replies breaking the protocol. by_status: matched replies by
// Status value (STATUS_UNSPECIFIED from 1.x servers counts as OK). socket_resets:
// times the DEALER was replaced because libzmq ended its connection for good (a
// protocol error: a reply over max_message_bytes, a peer speaking nonsense, a
// handshake the server refused); replies to what the old socket sent are lost.
struct Stats {
  std::uint64_t sent = 0;
  std::uint64_t send_failed = 0;
  std::uint64_t received = 0;
  std::uint64_t stale_dropped = 0;
  std::uint64_t unknown_dropped = 0;
  std::uint64_t malformed_dropped = 0;
  std::map<int, std::uint64_t> by_status;
  std::uint64_t socket_resets = 0;
};

class Matcher {
 public:
  static constexpr std::size_t kDefaultMaxPending = 4096;
  explicit Matcher(std::size_t max_pending = kDefaultMaxPending) : max_pending_(max_pending) {}

  // Ids start at 1 and strictly increase; an id whose send failed is not reused.
  std::uint64_t next_request_id() noexcept { return next_id_++; }

  // Record an outstanding request before sending it, so no reply can outrun it.
  // awaited: a request() waits for this exact id (its reply never reaches take_latest).
  void track(std::uint64_t request_id, const std::string& model_id, bool awaited, std::int64_t now_ns);
  void sent() noexcept { ++stats_.sent; }
  // The connection replaced its socket (see Stats::socket_resets).
  void socket_reset() noexcept { ++stats_.socket_resets; }
  // The send failed: forget the request.
  void send_failed(std::uint64_t request_id);
  // Its request() gave up: a late reply is dropped as stale.
  void abandon(std::uint64_t request_id);

  // Route one decoded message (counted and dropped when it matches nothing).
  void on_reply(Decoded decoded, std::int64_t now_ns);

  // The newest unread reply of a model (any status but SUPERSEDED).
  std::optional<Reply> take_latest(const std::string& model_id);
  // The outcome of a request(): its reply, or a protocol error.
  std::optional<Result<Reply>> take_awaited(std::uint64_t request_id);

  const Stats& stats() const noexcept { return stats_; }
  std::size_t outstanding() const noexcept { return pending_.size(); }

 private:
  enum class Mode { latest, awaited, abandoned };
  struct Pending {
    std::string model_id;
    std::int64_t sent_ns;
    Mode mode;
  };
  void advance(const std::string& model_id, std::uint64_t request_id);
  std::uint64_t oldest_pending(const std::string& model_id) const;

  std::size_t max_pending_;
  std::uint64_t next_id_ = 1;
  Stats stats_;
  std::map<std::uint64_t, Pending> pending_;  // ordered by id, i.e. by send order
  std::unordered_map<std::string, std::uint64_t> newest_;  // highest id delivered per model
  std::unordered_map<std::string, Reply> latest_;           // newest unread per model
  std::unordered_map<std::uint64_t, Result<Reply>> awaited_;
};

}  // namespace inferential

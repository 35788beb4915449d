#include "inferential/connection.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>

namespace inferential {

namespace detail {

// Everything a Connection and its Models share. Guarded by `mu`: libzmq sockets
// are not thread-safe, and the matcher is a plain state machine.
struct ConnectionState {
  std::mutex mu;
  Options options;
  zmq::context_t context{1};
  zmq::socket_t socket;   // the DEALER (opened by open_socket)
  zmq::socket_t monitor;  // the PAIR reading its monitor events
  // DEALERs opened so far: names each one's monitor endpoint uniquely in `context`.
  std::uint64_t generation = 0;
  Matcher matcher;
  bool closed = false;

  // Closes the DEALER and its monitor's reader, the monitor stopped first: libzmq sends
  // monitor events blocking, on the context's I/O thread, so an event sent after the reader
  // closed (the link dropping while the DEALER closes) would stall that thread for good,
  // and the context's close below with it.
  void release_sockets() {
    if (socket) zmq_socket_monitor(static_cast<void*>(socket), nullptr, 0);
    monitor.close();
    socket.close();
  }

  void close_locked() noexcept {
    if (closed) return;
    closed = true;
    try {
      release_sockets();
      context.close();
    } catch (...) {
      // Closing can only fail on a socket already gone; nothing left to release.
    }
  }
  ~ConnectionState() { close_locked(); }
};

}  // namespace detail

namespace {

using Clock = std::chrono::steady_clock;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

std::uint64_t unix_now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

// A waiting call holds the connection's mutex at most this long at a time.
constexpr auto kWaitSlice = std::chrono::milliseconds(5);

Error make_error(ErrorKind kind, std::string message, std::uint64_t rid = 0, std::string model = {}) {
  Error e;
  e.kind = kind;
  e.message = std::move(message);
  e.request_id = rid;
  e.model_id = std::move(model);
  return e;
}

Error closed_error(const Options* o) {
  return make_error(ErrorKind::closed, "connection to " + (o ? o->endpoint : std::string("?")) + " is closed");
}

Error from_exception(const char* where) {
  try {
    throw;
  } catch (const zmq::error_t& e) {
    if (e.num() == ETERM || e.num() == ENOTSOCK) return make_error(ErrorKind::closed, std::string(where) + ": " + e.what());
    return make_error(ErrorKind::internal, std::string(where) + ": zmq: " + e.what());
  } catch (const std::exception& e) {
    return make_error(ErrorKind::internal, std::string(where) + ": " + e.what());
  } catch (...) {
    return make_error(ErrorKind::internal, std::string(where) + ": unknown failure");
  }
}

// Reads every message waiting on the socket into the matcher, without blocking.
void drain(detail::ConnectionState& s) {
  const Limits& limits = s.options.limits;
  while (true) {
    std::vector<zmq::message_t> frames;
    zmq::message_t first;
    if (!s.socket.recv(first, zmq::recv_flags::dontwait)) return;
    frames.push_back(std::move(first));
    while (frames.back().more()) {
      zmq::message_t part;
      // The remaining parts of a multipart message are already here.
      if (!s.socket.recv(part, zmq::recv_flags::none)) break;
      frames.push_back(std::move(part));
    }
    s.matcher.on_reply(decode_reply(std::move(frames), limits), now_ns());
  }
}

// Waits until a message may be readable or `until` passes, holding the lock at most
// one slice (the caller re-takes it and re-checks).
void poll_slice(detail::ConnectionState& s, Clock::time_point until) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
  if (left.count() <= 0) return;
  left = std::min<std::chrono::milliseconds>(left + std::chrono::milliseconds(1), kWaitSlice);
  zmq::pollitem_t item{static_cast<void*>(s.socket), 0, ZMQ_POLLIN, 0};
  zmq::poll(&item, 1, left);
}

// The monitor events that tell a connection libzmq ended for good from one it is
// re-establishing: after a network error the CONNECT_RETRIED follows its DISCONNECTED
// within the same io-thread turn; after a protocol error none comes.
constexpr int kLinkEvents = ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECT_RETRIED | ZMQ_EVENT_CONNECTED;
// How long a DISCONNECTED waits for its CONNECT_RETRIED before the link counts as lost.
constexpr auto kRetryGrace = std::chrono::milliseconds(100);

// Opens a DEALER with the connection's options, the PAIR reading its monitor, and connects
// (throws zmq::error_t; a bad endpoint is reported by the caller).
void open_socket(detail::ConnectionState& s) {
  const auto& o = s.options;
  zmq::socket_t sock(s.context, zmq::socket_type::dealer);
  // Never a routing id: libzmq assigns a unique one, so two connections with the
  // same client_id cannot steal each other's replies.
  sock.set(zmq::sockopt::linger, 0);
  // Queue nothing for a server that is not connected: a reconnect delivers no backlog.
  sock.set(zmq::sockopt::immediate, 1);
  sock.set(zmq::sockopt::reconnect_ivl, o.reconnect_ivl_ms);
  sock.set(zmq::sockopt::reconnect_ivl_max, o.reconnect_ivl_max_ms);
  // A silent server is found by TCP keepalive, never by ZMTP PINGs from this socket:
  // libzmq 4.3.x aborts the process when a PING timer fires on a connection whose
  // input is paused at RCVHWM and whose peer has hung up (protocol §8, "Liveness").
  // Probes every interval (whole seconds, at least 1), dropped after the timeout.
  if (o.heartbeat_ivl_ms > 0) {
    const int every_s = std::max(1, (o.heartbeat_ivl_ms + 999) / 1000);
    sock.set(zmq::sockopt::tcp_keepalive, 1);
    sock.set(zmq::sockopt::tcp_keepalive_idle, every_s);
    sock.set(zmq::sockopt::tcp_keepalive_intvl, every_s);
    sock.set(zmq::sockopt::tcp_keepalive_cnt,
             std::max(1, (o.heartbeat_timeout_ms + every_s * 1000 - 1) / (every_s * 1000)));
    if (o.heartbeat_timeout_ms > 0) sock.set(zmq::sockopt::tcp_maxrt, o.heartbeat_timeout_ms);
  }
  sock.set(zmq::sockopt::sndhwm, o.send_hwm);
  sock.set(zmq::sockopt::rcvhwm, o.recv_hwm);
  sock.set(zmq::sockopt::sndtimeo, o.send_timeout_ms);
  sock.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(o.limits.max_message_bytes));
  if (o.curve_server_key) {  // validate() saw all three, each a Z85 key
    sock.set(zmq::sockopt::curve_serverkey, *o.curve_server_key);
    sock.set(zmq::sockopt::curve_publickey, *o.curve_public_key);
    sock.set(zmq::sockopt::curve_secretkey, *o.curve_secret_key);
  }
  // Watched for a connection libzmq ends and never re-establishes (link_lost); the PAIR
  // connects before the DEALER does, so no event is missed.
  const std::string monitor_endpoint = "inproc://inferential-monitor-" + std::to_string(s.generation);
  if (zmq_socket_monitor(static_cast<void*>(sock), monitor_endpoint.c_str(), kLinkEvents) != 0)
    throw zmq::error_t();
  zmq::socket_t monitor(s.context, zmq::socket_type::pair);
  monitor.set(zmq::sockopt::linger, 0);
  monitor.connect(monitor_endpoint);
  sock.connect(o.endpoint);
  s.socket = std::move(sock);
  s.monitor = std::move(monitor);
}

// True when libzmq dropped the connection for good. After a protocol error (a reply over
// max_message_bytes, a peer speaking nonsense, a handshake the server refused) libzmq
// closes the connection and, unlike after a network error, never reconnects: a
// DISCONNECTED event with no CONNECT_RETRIED after it. Read on each send (one
// non-blocking poll of the monitor).
bool link_lost(detail::ConnectionState& s) {
  bool lost = false;
  auto wait = std::chrono::milliseconds(0);
  while (true) {
    zmq::pollitem_t item{static_cast<void*>(s.monitor), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, wait) <= 0) break;
    // An event is two frames: (u16 event, u32 value) in native byte order, then the endpoint.
    zmq::message_t first;
    if (!s.monitor.recv(first, zmq::recv_flags::dontwait)) break;
    std::uint16_t event = 0;
    if (first.size() >= sizeof event) std::memcpy(&event, first.data(), sizeof event);
    for (bool more = first.more(); more;) {
      zmq::message_t part;
      if (!s.monitor.recv(part, zmq::recv_flags::dontwait)) break;
      more = part.more();
    }
    lost = event == ZMQ_EVENT_DISCONNECTED;
    // After a DISCONNECTED, give the CONNECT_RETRIED of a network error its moment (it is
    // queued right after; a protocol error has none): once per disconnect.
    wait = lost ? kRetryGrace : std::chrono::milliseconds(0);
  }
  return lost;
}

// Before a send: when libzmq ended the connection for good, closes the DEALER and opens a
// new one to the same server, counted in stats.socket_resets. Replies to what the old one
// sent are lost: their requests time out as they would have.
void recover(detail::ConnectionState& s) {
  if (!link_lost(s)) return;
  s.release_sockets();
  ++s.generation;
  open_socket(s);
  s.matcher.socket_reset();
}

std::string normalize_endpoint(const std::string& endpoint) {
  return endpoint.find("://") == std::string::npos ? "tcp://" + endpoint : endpoint;
}

}  // namespace

// --- Connection ---------------------------------------------------------------------

Result<Connection> Connection::create(Options options) noexcept {
  try {
    if (auto v = validate(options); !v) return std::move(v).error();
    if (!options.client_id) options.client_id = default_client_id();
    options.endpoint = normalize_endpoint(options.endpoint);
    auto state = std::make_shared<detail::ConnectionState>();
    state->options = options;
    try {
      open_socket(*state);
    } catch (const zmq::error_t& e) {
      // Every option was validated: what libzmq can still refuse is the endpoint.
      return make_error(ErrorKind::invalid_argument, "cannot connect to '" + options.endpoint + "': " + e.what());
    }
    return Connection(std::move(state));
  } catch (...) {
    return from_exception("Connection::create");
  }
}

Connection& Connection::operator=(Connection&& other) noexcept {
  if (this != &other) {
    close();
    state_ = std::move(other.state_);
  }
  return *this;
}

Connection::~Connection() { close(); }

void Connection::close() noexcept {
  if (!state_) return;
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->close_locked();
}

bool Connection::closed() const noexcept {
  if (!state_) return true;
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->closed;
}

const Options& Connection::options() const noexcept {
  static const Options none{};
  return state_ ? state_->options : none;
}

Stats Connection::stats() const noexcept {
  if (!state_) return {};
  try {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (!state_->closed) drain(*state_);
    return state_->matcher.stats();
  } catch (...) {
    return {};
  }
}

Result<SocketOptions> Connection::socket_options() const noexcept {
  if (!state_) return closed_error(nullptr);
  try {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->closed) return closed_error(&state_->options);
    auto& s = state_->socket;
    SocketOptions o;
    o.reconnect_ivl = s.get(zmq::sockopt::reconnect_ivl);
    o.reconnect_ivl_max = s.get(zmq::sockopt::reconnect_ivl_max);
    o.heartbeat_ivl = s.get(zmq::sockopt::heartbeat_ivl);
    o.heartbeat_timeout = s.get(zmq::sockopt::heartbeat_timeout);
    o.tcp_keepalive = s.get(zmq::sockopt::tcp_keepalive);
    o.tcp_keepalive_idle = s.get(zmq::sockopt::tcp_keepalive_idle);
    o.tcp_keepalive_intvl = s.get(zmq::sockopt::tcp_keepalive_intvl);
    o.tcp_keepalive_cnt = s.get(zmq::sockopt::tcp_keepalive_cnt);
    o.tcp_maxrt = s.get(zmq::sockopt::tcp_maxrt);
    o.immediate = s.get(zmq::sockopt::immediate);
    o.sndtimeo = s.get(zmq::sockopt::sndtimeo);
    o.sndhwm = s.get(zmq::sockopt::sndhwm);
    o.rcvhwm = s.get(zmq::sockopt::rcvhwm);
    o.linger = s.get(zmq::sockopt::linger);
    o.maxmsgsize = s.get(zmq::sockopt::maxmsgsize);
    o.routing_id = s.get(zmq::sockopt::routing_id);
    return o;
  } catch (...) {
    return from_exception("Connection::socket_options");
  }
}

Result<Model> Connection::model(std::string model_id, ModelOptions options) const noexcept {
  try {
    if (!state_) return closed_error(nullptr);
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->closed) return closed_error(&state_->options);
    }
    const Limits& l = state_->options.limits;
    if (model_id.empty()) return make_error(ErrorKind::invalid_argument, "model_id is empty");
    if (model_id.size() > l.max_id_bytes)
      return make_error(ErrorKind::invalid_argument,
                        "model_id is longer than " + std::to_string(l.max_id_bytes) + " bytes");
    if (!is_valid_utf8(model_id)) return make_error(ErrorKind::invalid_argument, "model_id is not valid UTF-8");
    if (!std::isfinite(options.latency_budget_ms) || options.latency_budget_ms < 0.0f)
      return make_error(ErrorKind::invalid_argument, "latency_budget_ms must be finite and >= 0");
    return Model(state_, std::move(model_id), options);
  } catch (...) {
    return from_exception("Connection::model");
  }
}

// --- sending and waiting (shared by models and server_info) ----------------------------

namespace {

// Assigns the next request id, encodes with it and sends. The lock is held from id
// assignment to the send, so ids leave in increasing order.
Result<std::uint64_t> send_observation(detail::ConnectionState& s, const std::string& model_id,
                                       const ModelOptions& model, const Observation& obs, bool awaited,
                                       bool describe) {
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.closed) return closed_error(&s.options);
  recover(s);
  drain(s);
  const std::uint64_t rid = s.matcher.next_request_id();
  EnvelopeFields f;
  f.client_id = *s.options.client_id;
  f.client_type = s.options.client_type;
  f.model_id = model_id;
  f.request_id = rid;
  f.latency_budget_ms = model.latency_budget_ms;
  f.priority = model.priority;
  f.auth_token = s.options.auth_token;
  f.timestamp_ns = unix_now_ns();
  f.single_payload_frame = s.options.single_payload_frame;
  f.describe = describe;
  auto frames = encode_observation(f, obs, s.options.limits);
  if (!frames) {
    Error e = std::move(frames).error();
    e.model_id = model_id;
    return e;
  }
  s.matcher.track(rid, model_id, awaited, now_ns());
  try {
    auto& parts = frames.value();
    for (std::size_t i = 0; i < parts.size(); ++i) {
      const auto flags = i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      // Only the first part can block (ZMQ_SNDTIMEO with ZMQ_IMMEDIATE): once it is
      // queued, the rest of the message is too.
      if (!s.socket.send(parts[i], flags)) {
        s.matcher.send_failed(rid);
        return make_error(ErrorKind::server_unavailable,
                          "no server at " + s.options.endpoint + " accepted the observation within " +
                              std::to_string(s.options.send_timeout_ms) + " ms (not connected, or not reading)",
                          rid, model_id);
      }
    }
  } catch (...) {
    s.matcher.send_failed(rid);
    Error e = from_exception("observe");
    e.request_id = rid;
    e.model_id = model_id;
    return e;
  }
  s.matcher.sent();
  return rid;
}

// Waits for the reply to exactly `rid` (its reply never reaches get_result()).
Result<Reply> await_reply(detail::ConnectionState& s, std::uint64_t rid, const std::string& model_id, int wait) {
  const auto until = Clock::now() + std::chrono::milliseconds(wait);
  while (true) {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.closed) return closed_error(&s.options);
    drain(s);
    if (auto got = s.matcher.take_awaited(rid)) {
      if (!*got) return std::move(*got).error();
      Reply reply = std::move(got->value());
      if (auto err = error_for_reply(reply)) return std::move(*err);
      return reply;
    }
    if (Clock::now() >= until) {
      s.matcher.abandon(rid);
      return make_error(ErrorKind::timeout,
                        "no reply to request " + std::to_string(rid) + " from model '" + model_id + "' within " +
                            std::to_string(wait) + " ms",
                        rid, model_id);
    }
    poll_slice(s, until);
  }
}

std::optional<std::size_t> parse_count(const std::map<std::string, std::string>& m, const char* key) {
  auto it = m.find(key);
  if (it == m.end() || it->second.empty() || it->second.size() > 19 ||
      it->second.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  return static_cast<std::size_t>(std::stoull(it->second));
}

}  // namespace

Result<ServerInfo> Connection::server_info(std::optional<int> timeout_ms) const noexcept {
  try {
    if (!state_) return closed_error(nullptr);
    auto& s = *state_;
    const int wait = std::max(0, timeout_ms.value_or(s.options.request_timeout_ms));
    auto rid = send_observation(s, "", ModelOptions{}, Observation(), true, true);
    if (!rid) return std::move(rid).error();
    auto reply = await_reply(s, *rid, "", wait);
    if (!reply) return std::move(reply).error();
    ServerInfo info;
    info.metadata = reply->metadata;
    info.server = reply->metadata.count("server") ? reply->metadata.at("server") : std::string();
    struct Field {
      const char* key;
      std::size_t* to;
    };
    Limits& l = info.limits;
    const Field fields[] = {{"max_message_bytes", &l.max_message_bytes},
                            {"max_payload_frames", &l.max_payload_frames},
                            {"max_tensors", &l.max_tensors},
                            {"max_dims", &l.max_dims},
                            {"max_key_bytes", &l.max_key_bytes},
                            {"max_metadata_entries", &l.max_metadata_entries},
                            {"max_metadata_value_bytes", &l.max_metadata_value_bytes},
                            {"max_id_bytes", &l.max_id_bytes},
                            {"max_auth_token_bytes", &l.max_auth_token_bytes}};
    auto version = parse_count(info.metadata, "protocol_version");
    if (!version || *version > UINT32_MAX)
      return make_error(ErrorKind::protocol, "describe reply without a protocol_version", *rid);
    info.protocol_version = static_cast<std::uint32_t>(*version);
    for (const auto& f : fields) {
      auto v = parse_count(info.metadata, f.key);
      if (!v) return make_error(ErrorKind::protocol, std::string("describe reply without a valid ") + f.key, *rid);
      *f.to = *v;
    }
    return info;
  } catch (...) {
    return from_exception("server_info");
  }
}

// --- Model ----------------------------------------------------------------------------

Result<std::uint64_t> Model::send(const Observation& obs, bool awaited) const {
  return send_observation(*state_, model_id_, options_, obs, awaited, false);
}

Result<std::uint64_t> Model::observe(const Observation& observation) const noexcept {
  try {
    if (!state_) return closed_error(nullptr);
    return send(observation, false);
  } catch (...) {
    return from_exception("observe");
  }
}

Result<std::optional<Reply>> Model::get_result(std::optional<int> timeout_ms) const noexcept {
  try {
    if (!state_) return closed_error(nullptr);
    auto& s = *state_;
    const int wait = std::max(0, timeout_ms.value_or(s.options.default_timeout_ms));
    const auto until = Clock::now() + std::chrono::milliseconds(wait);
    while (true) {
      std::lock_guard<std::mutex> lock(s.mu);
      if (s.closed) return closed_error(&s.options);
      drain(s);
      if (auto reply = s.matcher.take_latest(model_id_)) {
        if (auto err = error_for_reply(*reply)) return std::move(*err);
        return std::optional<Reply>(std::move(*reply));
      }
      if (Clock::now() >= until) return std::optional<Reply>();
      poll_slice(s, until);
    }
  } catch (...) {
    return from_exception("get_result");
  }
}

Result<Reply> Model::request(const Observation& observation, std::optional<int> timeout_ms) const noexcept {
  try {
    if (!state_) return closed_error(nullptr);
    const int wait = std::max(0, timeout_ms.value_or(state_->options.request_timeout_ms));
    auto rid = send(observation, true);
    if (!rid) return std::move(rid).error();
    return await_reply(*state_, *rid, model_id_, wait);
  } catch (...) {
    return from_exception("request");
  }
}

}  // namespace inferential

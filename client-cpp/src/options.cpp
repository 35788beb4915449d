#include "inferential/options.hpp"

#include <unistd.h>

#include <zmq.h>

#include <cstdio>
#include <random>

namespace inferential {

namespace {
Error bad(std::string message) { return Error{ErrorKind::invalid_argument, 0, false, 0, 0, {}, std::move(message)}; }
// A Z85 CURVE key: 40 characters that decode to 32 bytes. zmq_z85_decode is the decoder
// libzmq itself uses for the socket option, so what passes here is what the socket accepts.
bool is_z85_key(const std::string& key) {
  if (key.size() != 40) return false;
  std::uint8_t decoded[32];
  return zmq_z85_decode(decoded, key.c_str()) != nullptr;
}

// The first problem with the CURVE options, if any (never quoting a key: one is a secret).
std::optional<std::string> check_curve(const Options& o) {
  const std::pair<const char*, const std::optional<std::string>*> keys[] = {
      {"curve_server_key", &o.curve_server_key},
      {"curve_public_key", &o.curve_public_key},
      {"curve_secret_key", &o.curve_secret_key}};
  int given = 0;
  for (const auto& [name, key] : keys) {
    if (!*key) continue;
    ++given;
    if (!is_z85_key(**key))
      return std::string("Options.") + name + " must be a Z85 key of 40 characters (inferential keys generate)";
  }
  if (given != 0 && given != 3)
    return std::string("CURVE needs curve_server_key, curve_public_key and curve_secret_key together "
                       "(the robot's pair: inferential keys generate)");
  if (given == 3 && !curve_available())
    return std::string("CURVE keys were given but this libzmq was built without CURVE support");
  return std::nullopt;
}

}  // namespace

bool curve_available() noexcept { return zmq_has("curve") != 0; }

Result<void> validate(const Options& o) {
  if (o.endpoint.empty()) return bad("Options.endpoint is empty");
  const std::pair<const char*, int> non_negative[] = {
      {"reconnect_ivl_max_ms", o.reconnect_ivl_max_ms}, {"heartbeat_ivl_ms", o.heartbeat_ivl_ms},
      {"heartbeat_timeout_ms", o.heartbeat_timeout_ms}, {"send_timeout_ms", o.send_timeout_ms},
      {"default_timeout_ms", o.default_timeout_ms},     {"request_timeout_ms", o.request_timeout_ms},
      {"send_hwm", o.send_hwm},                         {"recv_hwm", o.recv_hwm}};
  for (const auto& [name, value] : non_negative)
    if (value < 0) return bad(std::string("Options.") + name + " must be >= 0, got " + std::to_string(value));
  // libzmq reads a reconnect interval of 0 as "never reconnect": refuse it.
  if (o.reconnect_ivl_ms < 1)
    return bad("Options.reconnect_ivl_ms must be >= 1 (0 would never reconnect), got " +
               std::to_string(o.reconnect_ivl_ms));
  if (o.reconnect_ivl_max_ms != 0 && o.reconnect_ivl_max_ms < o.reconnect_ivl_ms)
    return bad("Options.reconnect_ivl_max_ms must be 0 or >= reconnect_ivl_ms (" +
               std::to_string(o.reconnect_ivl_max_ms) + " < " + std::to_string(o.reconnect_ivl_ms) + ")");
  const Limits& l = o.limits;
  if (o.client_id) {
    if (o.client_id->empty()) return bad("Options.client_id is empty; leave it unset to generate one");
    if (o.client_id->size() > l.max_id_bytes)
      return bad("Options.client_id is longer than " + std::to_string(l.max_id_bytes) + " bytes");
    if (!is_valid_utf8(*o.client_id)) return bad("Options.client_id is not valid UTF-8");
  }
  if (o.client_type.size() > l.max_client_type_bytes)
    return bad("Options.client_type is longer than " + std::to_string(l.max_client_type_bytes) + " bytes");
  if (!is_valid_utf8(o.client_type)) return bad("Options.client_type is not valid UTF-8");
  if (o.auth_token.size() > l.max_auth_token_bytes)
    return bad("Options.auth_token is longer than " + std::to_string(l.max_auth_token_bytes) + " bytes");
  if (!is_valid_utf8(o.auth_token)) return bad("Options.auth_token is not valid UTF-8");
  if (auto e = check_curve(o)) return bad(*e);
  if (l.max_message_bytes == 0 || l.max_message_bytes > static_cast<std::size_t>(INT64_MAX))
    return bad("Options.limits.max_message_bytes is out of range");
  return {};
}

std::string default_client_id() {
  char host[256] = {0};
  if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') std::snprintf(host, sizeof host, "robot");
  std::string name(host);
  name = name.substr(0, name.find('.'));
  std::random_device rd;
  char tail[16];
  std::snprintf(tail, sizeof tail, "%06x", static_cast<unsigned>(rd() & 0xFFFFFFu));
  return name + "-" + std::to_string(static_cast<long>(getpid())) + "-" + tail;
}

}  // namespace inferential

// Connection options: one struct with defaulted members, passed to Connection::create().
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "inferential/errors.hpp"
#include "inferential/wire.hpp"

namespace inferential {

struct Options {
  // "tcp://host:port" or "ipc://path"; without a scheme, tcp:// is assumed.
  std::string endpoint = "tcp://127.0.0.1:5555";
  // The robot's name as the server sees it (non-empty); unset: "{host}-{pid}-{6 hex}"
  // (default_client_id()). Connection::options() shows the one in use.
  std::optional<std::string> client_id;
  std::string client_type;  // free-form ("arm", "sensor")

  // Reconnection (docs/protocol.md §8): after a failed or lost connection libzmq waits
  // reconnect_ivl_ms, doubling after each failure up to reconnect_ivl_max_ms
  // (0 = no doubling). reconnect_ivl_ms must be >= 1 (libzmq reads 0 as "never").
  int reconnect_ivl_ms = 100;
  int reconnect_ivl_max_ms = 5000;
  // Liveness (protocol §8): an idle connection is probed by TCP keepalive every interval
  // (whole seconds, at least 1; 0 = the kernel's defaults) and a server silent for the
  // timeout (probes or data unanswered: ZMQ_TCP_MAXRT) is dropped and reconnected. No
  // ZMTP PINGs: their timer can abort the process in libzmq 4.3.x.
  int heartbeat_ivl_ms = 1000;
  int heartbeat_timeout_ms = 5000;
  // Longest observe() waits for a connected server with room before failing with
  // server_unavailable (ZMQ_SNDTIMEO with ZMQ_IMMEDIATE).
  int send_timeout_ms = 1000;
  int default_timeout_ms = 100;    // get_result() wait when none is given
  int request_timeout_ms = 1000;   // request() wait when none is given
  int send_hwm = 100;
  int recv_hwm = 100;
  std::string auth_token;  // sent with every observation when non-empty
  // Join every tensor into exactly one payload frame (1.x servers read only one).
  bool single_payload_frame = false;
  // ZMQ CURVE (docs/security.md): the server's public key and this robot's key pair, Z85
  // text of 40 characters each (`inferential keys generate`). All three or none: with
  // them the connection is encrypted and the server knows the robot by its key; a server
  // with another key never completes the handshake, so observe() fails with
  // server_unavailable and nothing is sent. The secret key is never logged.
  std::optional<std::string> curve_server_key;
  std::optional<std::string> curve_public_key;
  std::optional<std::string> curve_secret_key;
  Limits limits;
};

// True when the linked libzmq can do CURVE (it was built with libsodium or its own crypto).
bool curve_available() noexcept;

// Checks every option; the error (kind invalid_argument) names the first bad one.
Result<void> validate(const Options& options);

// "{hostname}-{pid}-{6 hex digits}": unique per process, readable in server logs.
std::string default_client_id();

}  // namespace inferential

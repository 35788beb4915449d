#include "inferential/errors.hpp"

#include "inferential/wire.hpp"

namespace inferential {

const char* error_kind_name(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::invalid_request: return "invalid_request";
    case ErrorKind::unknown_model: return "unknown_model";
    case ErrorKind::model_error: return "model_error";
    case ErrorKind::expired: return "expired";
    case ErrorKind::queue_full: return "queue_full";
    case ErrorKind::deadline_unmeetable: return "deadline_unmeetable";
    case ErrorKind::superseded: return "superseded";
    case ErrorKind::unauthenticated: return "unauthenticated";
    case ErrorKind::shutting_down: return "shutting_down";
    case ErrorKind::cancelled: return "cancelled";
    case ErrorKind::unknown_status: return "unknown_status";
    case ErrorKind::timeout: return "timeout";
    case ErrorKind::server_unavailable: return "server_unavailable";
    case ErrorKind::protocol: return "protocol";
    case ErrorKind::invalid_argument: return "invalid_argument";
    case ErrorKind::closed: return "closed";
    case ErrorKind::internal: return "internal";
  }
  return "internal";
}

ErrorKind error_kind_for_status(int s) noexcept {
  switch (s) {
    case status::invalid_request: return ErrorKind::invalid_request;
    case status::unknown_model: return ErrorKind::unknown_model;
    case status::model_error: return ErrorKind::model_error;
    case status::expired: return ErrorKind::expired;
    case status::queue_full: return ErrorKind::queue_full;
    case status::deadline_unmeetable: return ErrorKind::deadline_unmeetable;
    case status::superseded: return ErrorKind::superseded;
    case status::unauthenticated: return ErrorKind::unauthenticated;
    case status::shutting_down: return ErrorKind::shutting_down;
    case status::cancelled: return ErrorKind::cancelled;
    default: return ErrorKind::unknown_status;
  }
}

std::string Error::to_string() const {
  std::string out = error_kind_name(kind);
  if (status) out += " (" + status_name(status) + ")";
  if (request_id) {
    out += ": request " + std::to_string(request_id);
    if (!model_id.empty()) out += " to model '" + model_id + "'";
  }
  if (!message.empty()) out += ": " + message;
  return out;
}

}  // namespace inferential

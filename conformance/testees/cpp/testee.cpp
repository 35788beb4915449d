// The C++ testee: conformance/TESTEE.md commands run against the public API of the
// C++ client. handle() never throws: every failure becomes an answer line.
#include <pybind11/pybind11.h>

#include <cmath>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "inferential/inferential.hpp"

namespace inf = inferential;
using json = nlohmann::json;

namespace {

// Input the client itself would never see (the JSON cannot express it as a C++
// value): reported as invalid_argument, like the client's own refusals.
struct BadInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string to_hex(const void* data, std::size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

std::string from_hex(const std::string& hex) {
  if (hex.size() % 2) throw BadInput("odd-length hex");
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw BadInput("bad hex digit");
  };
  std::string out(hex.size() / 2, '\0');
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<char>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  return out;
}

std::string status_json_name(int status) {
  const char* name = inf::wire::status_name(status);
  return name ? name : std::to_string(status);
}

std::string dtype_json_name(inf::DType d) {
  const char* name = inf::wire::dtype_name(static_cast<int>(d));
  return name ? name : std::to_string(static_cast<int>(d));
}

// A JSON integer (or decimal string) within [lo, hi].
template <class T>
T integer(const json& v, const char* what) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s.empty() || s.find_first_not_of("0123456789-") != std::string::npos) throw BadInput(std::string(what) + ": not an integer");
    try {
      if (s[0] == '-') {
        long long x = std::stoll(s);
        if (x < static_cast<long long>(std::numeric_limits<T>::min())) throw BadInput(std::string(what) + ": out of range");
        return static_cast<T>(x);
      }
      unsigned long long x = std::stoull(s);
      if (x > static_cast<unsigned long long>(std::numeric_limits<T>::max())) throw BadInput(std::string(what) + ": out of range");
      return static_cast<T>(x);
    } catch (const std::logic_error&) {
      throw BadInput(std::string(what) + ": out of range");
    }
  }
  if (v.is_number_unsigned()) {
    auto x = v.get<unsigned long long>();
    if (x > static_cast<unsigned long long>(std::numeric_limits<T>::max())) throw BadInput(std::string(what) + ": out of range");
    return static_cast<T>(x);
  }
  if (v.is_number_integer()) {
    auto x = v.get<long long>();
    if (x < static_cast<long long>(std::numeric_limits<T>::min()) ||
        (x > 0 && static_cast<unsigned long long>(x) > static_cast<unsigned long long>(std::numeric_limits<T>::max())))
      throw BadInput(std::string(what) + ": out of range");
    return static_cast<T>(x);
  }
  if (v.is_number_float()) {
    double x = v.get<double>();
    if (x != std::floor(x)) throw BadInput(std::string(what) + ": not an integer");
    return integer<T>(json(static_cast<long long>(x)), what);
  }
  throw BadInput(std::string(what) + ": not an integer");
}

float number(const json& v, const char* what) {
  if (!v.is_number()) throw BadInput(std::string(what) + ": not a number");
  return static_cast<float>(v.get<double>());
}

json error_json(const inf::Error& e) {
  if (e.kind == inf::ErrorKind::internal) return {{"kind", "testee_bug"}, {"message", e.to_string()}};
  json out = {{"kind", inf::error_kind_name(e.kind)}, {"message", e.message}};
  if (e.status) {
    out["status"] = status_json_name(e.status);
    out["retryable"] = e.retryable;
    out["retry_after_ms"] = e.retry_after_ms;
    out["request_id"] = std::to_string(e.request_id);
  }
  return out;
}

json reply_json(const inf::Reply& r) {
  json tensors = json::array();
  for (const auto& t : r.tensors)
    tensors.push_back({{"key", t.key()},
                       {"dtype", dtype_json_name(t.dtype())},
                       {"shape", t.shape()},
                       {"data", to_hex(t.data(), t.size_bytes())},
                       {"aligned", t.aligned()}});
  json timing = nullptr;
  if (r.timing)
    timing = {{"queue_wait_ms", r.timing->queue_wait_ms},
              {"inference_ms", r.timing->inference_ms},
              {"total_ms", r.timing->total_ms},
              {"batch_size", r.timing->batch_size}};
  json metadata = json::object();
  for (const auto& [k, v] : r.metadata) metadata[k] = v;
  return {{"status", status_json_name(r.status)},
          {"request_id", std::to_string(r.request_id)},
          {"model_id", r.model_id},
          {"client_id", r.client_id},
          {"protocol_version", r.protocol_version},
          {"retryable", r.retryable},
          {"error", r.error},
          {"retry_after_ms", r.retry_after_ms},
          {"timing", timing},
          {"tensors", tensors},
          {"metadata", metadata},
          {"first_action_step", r.first_action_step ? json(std::to_string(*r.first_action_step)) : json(nullptr)},
          {"action_period_ms", r.action_period_ms},
          {"predicted_delay_steps", r.predicted_delay_steps},
          {"actual_delay_steps", r.actual_delay_steps},
          {"valid_until_ns", r.valid_until_ns ? json(std::to_string(*r.valid_until_ns)) : json(nullptr)}};
}

// The observation of an observe/request/encode command. `storage` owns the tensor
// bytes the Observation points to (it copies them only when sent).
inf::Observation observation(const json& args, std::vector<std::string>& storage) {
  inf::Observation obs;
  const json& tensors = args.value("tensors", json::array());
  storage.reserve(tensors.size());
  for (const auto& t : tensors) {
    const std::string name = t.at("dtype").get<std::string>();
    inf::DType dtype;
    if (auto d = inf::dtype_from_name(name)) {
      dtype = *d;
    } else if (name == "DTYPE_UNSPECIFIED") {
      dtype = inf::DType::unspecified;
    } else {
      dtype = static_cast<inf::DType>(integer<int>(json(name), "dtype"));
    }
    std::vector<std::int64_t> shape;
    for (const auto& d : t.at("shape")) shape.push_back(integer<std::int64_t>(d, "shape"));
    storage.push_back(t.contains("data") && !t["data"].is_null() ? from_hex(t["data"].get<std::string>()) : std::string());
    obs.tensor(t.at("key").get<std::string>(), dtype, std::move(shape), storage.back().data(), storage.back().size());
  }
  const json metadata = args.value("metadata", json::object());  // a copy: items() must not outlive it
  for (const auto& [k, v] : metadata.items()) obs.metadata(k, v.get<std::string>());
  if (args.contains("urgency") && !args["urgency"].is_null()) obs.urgency(number(args["urgency"], "urgency"));
  if (args.contains("steps_remaining") && !args["steps_remaining"].is_null())
    obs.steps_remaining(integer<std::uint32_t>(args["steps_remaining"], "steps_remaining"));
  const json& model = args.value("model", json::object());
  if (model.contains("deadline_ns") && !model["deadline_ns"].is_null()) {
    auto deadline = integer<std::uint64_t>(model["deadline_ns"], "deadline_ns");
    if (deadline) obs.deadline_ns(deadline);
  }
  if (model.contains("actions_remaining") && !model["actions_remaining"].is_null())
    obs.actions_remaining(integer<std::uint32_t>(model["actions_remaining"], "actions_remaining"));
  if (model.contains("control_rate_hz") && !model["control_rate_hz"].is_null()) {
    float rate = number(model["control_rate_hz"], "control_rate_hz");
    if (rate != 0.0f) obs.control_rate_hz(rate);
  }
  if (args.contains("control_step") && !args["control_step"].is_null())
    obs.control_step(integer<std::uint64_t>(args["control_step"], "control_step"));
  return obs;
}

inf::ModelOptions model_options(const json& model) {
  inf::ModelOptions o;
  if (model.contains("latency_budget_ms") && !model["latency_budget_ms"].is_null())
    o.latency_budget_ms = number(model["latency_budget_ms"], "latency_budget_ms");
  if (model.contains("priority") && !model["priority"].is_null())
    o.priority = integer<std::uint32_t>(model["priority"], "priority");
  return o;
}

class Testee {
 public:
  json handle(const std::string& cmd, const json& args) {
    if (cmd == "hello") return {{"language", "cpp"}, {"client_version", "2.0.0"}};
    if (cmd == "connect") return connect(args);
    if (cmd == "observe" || cmd == "request") {
      const json& spec = args.at("model");
      auto m = need_connection().model(spec.at("model_id").get<std::string>(), model_options(spec));
      if (!m) return fail(m.error());
      std::vector<std::string> storage;
      auto obs = observation(args, storage);
      if (cmd == "observe") {
        auto rid = m->observe(obs);
        if (!rid) return fail(rid.error());
        return {{"request_id", std::to_string(*rid)}};
      }
      std::optional<int> timeout;
      if (args.contains("timeout_ms") && !args["timeout_ms"].is_null()) timeout = integer<int>(args["timeout_ms"], "timeout_ms");
      auto reply = m->request(obs, timeout);
      if (!reply) return fail(reply.error());
      return {{"reply", reply_json(*reply)}};
    }
    if (cmd == "get_result") {
      auto m = need_connection().model(args.at("model_id").get<std::string>());
      if (!m) return fail(m.error());
      int timeout = args.contains("timeout_ms") && !args["timeout_ms"].is_null() ? integer<int>(args["timeout_ms"], "timeout_ms") : 0;
      auto got = m->get_result(timeout);
      if (!got) return fail(got.error());
      return {{"reply", got->has_value() ? reply_json(**got) : json(nullptr)}};
    }
    if (cmd == "server_info") {
      std::optional<int> timeout;
      if (args.contains("timeout_ms") && !args["timeout_ms"].is_null()) timeout = integer<int>(args["timeout_ms"], "timeout_ms");
      auto info = need_connection().server_info(timeout);
      if (!info) return fail(info.error());
      const auto& l = info->limits;
      return {{"info",
               {{"protocol_version", info->protocol_version},
                {"server", info->server},
                {"limits",
                 {{"max_message_bytes", l.max_message_bytes},
                  {"max_payload_frames", l.max_payload_frames},
                  {"max_tensors", l.max_tensors},
                  {"max_dims", l.max_dims},
                  {"max_key_bytes", l.max_key_bytes},
                  {"max_metadata_entries", l.max_metadata_entries},
                  {"max_metadata_value_bytes", l.max_metadata_value_bytes},
                  {"max_id_bytes", l.max_id_bytes},
                  {"max_auth_token_bytes", l.max_auth_token_bytes}}}}}};
    }
    if (cmd == "stats") {
      auto s = need_connection().stats();
      json by_status = json::object();
      for (const auto& [st, n] : s.by_status) by_status[status_json_name(st)] = n;
      return {{"stats",
               {{"sent", s.sent},
                {"send_failed", s.send_failed},
                {"received", s.received},
                {"stale", s.stale_dropped},
                {"unknown", s.unknown_dropped},
                {"malformed", s.malformed_dropped},
                {"socket_resets", s.socket_resets},
                {"by_status", by_status}}}};
    }
    if (cmd == "socket_options") {
      auto o = need_connection().socket_options();
      if (!o) return fail(o.error());
      return {{"options",
               {{"reconnect_ivl", o->reconnect_ivl},
                {"reconnect_ivl_max", o->reconnect_ivl_max},
                {"heartbeat_ivl", o->heartbeat_ivl},
                {"heartbeat_timeout", o->heartbeat_timeout},
                {"tcp_keepalive", o->tcp_keepalive},
                {"tcp_keepalive_idle", o->tcp_keepalive_idle},
                {"tcp_keepalive_intvl", o->tcp_keepalive_intvl},
                {"tcp_keepalive_cnt", o->tcp_keepalive_cnt},
                {"tcp_maxrt", o->tcp_maxrt},
                {"immediate", o->immediate},
                {"sndtimeo", o->sndtimeo},
                {"sndhwm", o->sndhwm},
                {"rcvhwm", o->rcvhwm},
                {"linger", o->linger},
                {"maxmsgsize", o->maxmsgsize},
                {"routing_id", to_hex(o->routing_id.data(), o->routing_id.size())}}}};
    }
    if (cmd == "close") {
      if (conn_) conn_->close();
      return json::object();
    }
    if (cmd == "encode") return encode(args);
    if (cmd == "decode") return decode(args);
    if (cmd == "error_for") return error_for(args);
    if (cmd == "chunk_queue") return chunk_queue(args);
    return fail_kind("unsupported", "unknown command '" + cmd + "'");
  }

 private:
  static json fail(const inf::Error& e) { return {{"__error__", error_json(e)}}; }
  static json fail_kind(const char* kind, std::string message) {
    return {{"__error__", {{"kind", kind}, {"message", std::move(message)}}}};
  }

  inf::Connection& need_connection() {
    if (!conn_) throw std::logic_error("connect first");
    return *conn_;
  }

  json connect(const json& args) {
    inf::Options o;
    o.endpoint = args.at("endpoint").get<std::string>();
    const json& opts = args.value("options", json::object());
    auto int_opt = [&](const char* name, int& field) {
      if (opts.contains(name) && !opts[name].is_null()) field = integer<int>(opts[name], name);
    };
    if (opts.contains("client_id") && !opts["client_id"].is_null()) {
      if (opts["client_id"].is_number()) o.client_id = std::to_string(integer<long long>(opts["client_id"], "client_id"));
      else o.client_id = opts["client_id"].get<std::string>();
    }
    if (opts.contains("client_type") && !opts["client_type"].is_null()) o.client_type = opts["client_type"].get<std::string>();
    int_opt("reconnect_ivl_ms", o.reconnect_ivl_ms);
    int_opt("reconnect_ivl_max_ms", o.reconnect_ivl_max_ms);
    int_opt("send_timeout_ms", o.send_timeout_ms);
    int_opt("heartbeat_ivl_ms", o.heartbeat_ivl_ms);
    int_opt("heartbeat_timeout_ms", o.heartbeat_timeout_ms);
    int_opt("send_hwm", o.send_hwm);
    int_opt("recv_hwm", o.recv_hwm);
    int_opt("default_timeout_ms", o.default_timeout_ms);
    int_opt("request_timeout_ms", o.request_timeout_ms);
    if (opts.contains("max_message_bytes") && !opts["max_message_bytes"].is_null())
      o.limits.max_message_bytes = integer<std::size_t>(opts["max_message_bytes"], "max_message_bytes");
    if (opts.contains("auth_token") && !opts["auth_token"].is_null()) o.auth_token = opts["auth_token"].get<std::string>();
    if (opts.contains("single_payload_frame") && !opts["single_payload_frame"].is_null())
      o.single_payload_frame = opts["single_payload_frame"].get<bool>();
    for (auto [name, field] : {std::pair{"curve_server_key", &o.curve_server_key},
                               std::pair{"curve_public_key", &o.curve_public_key},
                               std::pair{"curve_secret_key", &o.curve_secret_key}})
      if (opts.contains(name) && !opts[name].is_null()) *field = opts[name].get<std::string>();
    if (conn_) conn_->close();
    conn_.reset();
    auto c = inf::Connection::create(o);
    if (!c) return fail(c.error());
    conn_.emplace(std::move(c).value());
    return json::object();
  }

  json encode(const json& args) {
    const json& model = args.at("model");
    inf::EnvelopeFields f;
    f.client_id = args.at("client_id").get<std::string>();
    f.client_type = args.value("client_type", std::string());
    f.model_id = model.at("model_id").get<std::string>();
    f.request_id = integer<std::uint64_t>(args.at("request_id"), "request_id");
    f.timestamp_ns = integer<std::uint64_t>(args.at("timestamp_ns"), "timestamp_ns");
    const auto mo = model_options(model);
    f.latency_budget_ms = mo.latency_budget_ms;
    f.priority = mo.priority;
    f.single_payload_frame = args.value("single_payload_frame", false);
    std::vector<std::string> storage;
    auto frames = inf::encode_observation(f, observation(args, storage), inf::Limits{});
    if (!frames) return fail(frames.error());
    json out = json::array();
    for (const auto& m : *frames) out.push_back(to_hex(m.data(), m.size()));
    return {{"frames", out}};
  }

  json decode(const json& args) {
    std::vector<zmq::message_t> frames;
    for (const auto& h : args.at("frames")) {
      std::string bytes = from_hex(h.get<std::string>());
      frames.emplace_back(bytes.data(), bytes.size());
    }
    auto d = inf::decode_reply(std::move(frames), inf::Limits{});
    if (d.reply) return {{"reply", reply_json(*d.reply)}};
    return {{"malformed", {{"message", d.malformed}, {"request_id", std::to_string(d.header_parsed ? d.request_id : 0)}}}};
  }

  json error_for(const json& args) {
    const json& s = args.at("status");
    int status;
    if (s.is_string()) {
      const std::string name = s.get<std::string>();
      if (auto v = inf::status_from_name(name)) status = *v;
      else status = integer<int>(s, "status");
    } else {
      status = integer<int>(s, "status");
    }
    inf::Reply r;
    r.status = status;
    r.retryable = args.value("retryable", false);
    r.error = args.value("error", std::string());
    r.protocol_version = args.contains("protocol_version") ? integer<std::uint32_t>(args["protocol_version"], "protocol_version") : 2;
    if (args.contains("request_id")) r.request_id = integer<std::uint64_t>(args["request_id"], "request_id");
    r.model_id = args.value("model_id", std::string("m"));
    if (args.contains("retry_after_ms")) r.retry_after_ms = integer<std::uint32_t>(args["retry_after_ms"], "retry_after_ms");
    auto err = inf::error_for_reply(r);
    return {{"error", err ? error_json(*err) : json(nullptr)}};
  }

  // Builds a queue on a fake clock and runs the ops in order (no socket).
  json chunk_queue(const json& args) {
    const std::string blend_name = args.value("blend", std::string("latest"));
    auto blend = inf::chunk_blend_from_name(blend_name);
    if (!blend) throw BadInput("unknown blend '" + blend_name + "'");
    // Shared with the clock function: the queue is moved out of its Result.
    auto now_ns = std::make_shared<std::int64_t>(
        args.contains("now_ns") && !args["now_ns"].is_null() ? integer<std::int64_t>(args["now_ns"], "now_ns") : 0);
    inf::ChunkQueueOptions o;
    o.blend = *blend;
    if (args.contains("new_weight") && !args["new_weight"].is_null()) {
      if (!args["new_weight"].is_number()) throw BadInput("new_weight: not a number");
      o.new_weight = args["new_weight"].get<double>();
    }
    if (args.contains("start_step") && !args["start_step"].is_null())
      o.start_step = integer<std::int64_t>(args["start_step"], "start_step");
    o.clock = [now_ns] { return *now_ns; };
    auto created = inf::ActionChunkQueue::create(std::move(o));
    if (!created) return fail(created.error());
    inf::ActionChunkQueue q = std::move(created).value();

    json results = json::array();
    for (const auto& op : args.at("ops")) {
      if (!op.is_object() || op.size() != 1) throw BadInput("an op is an object with one key");
      const auto entry = op.begin();
      const std::string name = entry.key();
      const json& body = entry.value();
      if (name == "add") {
        std::vector<std::vector<double>> rows;
        for (const auto& row : body.at("rows")) {
          rows.emplace_back();
          for (const auto& x : row) {
            if (!x.is_number()) throw BadInput("add: a row value is not a number");
            rows.back().push_back(x.get<double>());
          }
        }
        std::optional<std::int64_t> until;
        if (body.contains("valid_until_ns") && !body["valid_until_ns"].is_null())
          until = integer<std::int64_t>(body["valid_until_ns"], "valid_until_ns");
        auto queued = q.add(rows, integer<std::int64_t>(body.at("start_step"), "start_step"), until);
        if (!queued) return fail(queued.error());
        results.push_back(*queued);
      } else if (name == "pop") {
        auto action = q.pop();
        results.push_back(action ? json(*action) : json(nullptr));
      } else if (name == "peek") {
        std::size_t limit = std::numeric_limits<std::size_t>::max();
        if (body.contains("limit") && !body["limit"].is_null()) limit = integer<std::size_t>(body["limit"], "limit");
        auto peeked = q.peek(limit);
        if (!peeked) return fail(peeked.error());
        results.push_back(peeked->empty() ? json(nullptr) : json(*peeked));
      } else if (name == "remaining") {
        results.push_back(q.actions_remaining());
      } else if (name == "now_ns") {
        *now_ns = integer<std::int64_t>(body, "now_ns");
        results.push_back(nullptr);
      } else {
        throw BadInput("unknown chunk_queue op '" + name + "'");
      }
    }
    const auto& s = q.stats();
    return {{"results", results},
            {"stats",
             {{"executed", s.executed}, {"underruns", s.underruns}, {"held", s.held}, {"merged", s.merged}, {"late", s.late}}}};
  }

  std::optional<inf::Connection> conn_;
};

Testee& testee() {
  static Testee instance;
  return instance;
}

std::string handle(const std::string& line) {
  json answer;
  try {
    json command = json::parse(line);
    const std::string cmd = command.at("cmd").get<std::string>();
    command.erase("cmd");
    json result = testee().handle(cmd, command);
    if (result.contains("__error__")) {
      answer = {{"ok", false}, {"error", result["__error__"]}};
    } else {
      answer = {{"ok", true}};
      for (auto& [k, v] : result.items()) answer[k] = v;
    }
  } catch (const BadInput& e) {
    answer = {{"ok", false}, {"error", {{"kind", "invalid_argument"}, {"message", e.what()}}}};
  } catch (const std::exception& e) {
    answer = {{"ok", false}, {"error", {{"kind", "testee_bug"}, {"message", e.what()}}}};
  } catch (...) {
    answer = {{"ok", false}, {"error", {{"kind", "testee_bug"}, {"message", "unknown exception"}}}};
  }
  try {
    return answer.dump(-1, ' ', false, json::error_handler_t::replace);
  } catch (...) {
    return R"({"ok": false, "error": {"kind": "testee_bug", "message": "answer not serializable"}})";
  }
}

}  // namespace

PYBIND11_MODULE(inferential_testee_cpp, m) {
  m.doc() = "The C++ client's conformance testee (conformance/TESTEE.md)";
  m.def("handle", &handle, pybind11::arg("line"), pybind11::call_guard<pybind11::gil_scoped_release>(),
        "Run one JSON command line against the C++ client; returns the JSON answer line.");
}

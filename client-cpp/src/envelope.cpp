#include "inferential/envelope.hpp"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <climits>
#include <cmath>
#include <cstring>
#include <set>

#include "inferential.pb.h"

namespace inferential {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the wire is little-endian; this client passes element bytes through unchanged");

// --- Observation builder --------------------------------------------------------

Observation& Observation::tensor(std::string key, DType dtype, std::vector<std::int64_t> shape, const void* data,
                                 std::size_t size_bytes) {
  tensors_.push_back(TensorInput{std::move(key), dtype, std::move(shape), static_cast<const std::byte*>(data),
                                 size_bytes, nullptr});
  return *this;
}

Observation& Observation::tensor_shared(std::string key, DType dtype, std::vector<std::int64_t> shape,
                                        std::shared_ptr<const void> owner, const void* data,
                                        std::size_t size_bytes) {
  tensors_.push_back(TensorInput{std::move(key), dtype, std::move(shape), static_cast<const std::byte*>(data),
                                 size_bytes, std::move(owner)});
  return *this;
}

Observation& Observation::metadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
  return *this;
}

// --- checked arithmetic ---------------------------------------------------------

namespace {

bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t* out) { return __builtin_mul_overflow(a, b, out); }
bool add_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t* out) { return __builtin_add_overflow(a, b, out); }

Error invalid(std::string message) {
  return Error{ErrorKind::invalid_argument, 0, false, 0, 0, {}, std::move(message)};
}

std::string where(std::size_t i, const std::string& key) {
  std::string shown = key.size() > 40 ? key.substr(0, 40) + "..." : key;
  return "tensors[" + std::to_string(i) + "]" + (key.empty() ? "" : " '" + shown + "'");
}

// Elements times item size of a shape, or an error text.
std::optional<std::string> check_shape(const std::vector<std::int64_t>& shape, std::size_t item,
                                       const Limits& limits, std::uint64_t* bytes) {
  if (shape.size() > limits.max_dims)
    return std::to_string(shape.size()) + " dimensions, limit is " + std::to_string(limits.max_dims);
  std::uint64_t count = 1;
  for (std::int64_t dim : shape) {
    if (dim < 0) return "negative dimension " + std::to_string(dim);
    if (mul_overflows(count, static_cast<std::uint64_t>(dim), &count)) return std::string("shape overflows");
  }
  if (mul_overflows(count, item, bytes)) return std::string("shape overflows");
  return std::nullopt;
}

bool bool_bytes_valid(const std::byte* data, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i)
    if (static_cast<unsigned char>(data[i]) > 1) return false;
  return true;
}

std::optional<std::string> check_text(const char* what, const std::string& text, std::size_t max_bytes,
                                      bool required) {
  if (required && text.empty()) return std::string(what) + " is empty";
  if (text.size() > max_bytes)
    return std::string(what) + " is longer than " + std::to_string(max_bytes) + " bytes";
  if (!is_valid_utf8(text)) return std::string(what) + " is not valid UTF-8";
  return std::nullopt;
}

std::optional<std::string> check_metadata(const std::map<std::string, std::string>& metadata,
                                          const Limits& limits) {
  if (metadata.size() > limits.max_metadata_entries)
    return "metadata: " + std::to_string(metadata.size()) + " entries, limit is " +
           std::to_string(limits.max_metadata_entries);
  for (const auto& [k, v] : metadata) {
    if (auto e = check_text("metadata key", k, limits.max_key_bytes, true)) return e;
    if (auto e = check_text(("metadata '" + k.substr(0, 40) + "' value").c_str(), v,
                            limits.max_metadata_value_bytes, false))
      return e;
  }
  return std::nullopt;
}

bool finite_non_negative(float v) { return std::isfinite(v) && v >= 0.0f; }

void release_owner(void* /*data*/, void* hint) { delete static_cast<std::shared_ptr<const void>*>(hint); }

}  // namespace

// --- observation -> frames ----------------------------------------------------------

Result<std::vector<zmq::message_t>> encode_observation(const EnvelopeFields& f, const Observation& obs,
                                                       const Limits& limits) noexcept {
  try {
    if (auto e = check_text("client_id", f.client_id, limits.max_id_bytes, true)) return invalid(*e);
    if (auto e = check_text("client_type", f.client_type, limits.max_client_type_bytes, false)) return invalid(*e);
    if (auto e = check_text("model_id", f.model_id, limits.max_id_bytes, !f.describe)) return invalid(*e);
    if (f.describe && !f.model_id.empty()) return invalid("a describe request has an empty model_id");
    if (auto e = check_text("auth_token", f.auth_token, limits.max_auth_token_bytes, false)) return invalid(*e);
    if (!finite_non_negative(obs.urgency())) return invalid("urgency must be finite and >= 0");
    if (!finite_non_negative(f.latency_budget_ms)) return invalid("latency_budget_ms must be finite and >= 0");
    if (obs.control_rate_hz() && !finite_non_negative(*obs.control_rate_hz()))
      return invalid("control_rate_hz must be finite and >= 0");
    if (auto e = check_metadata(obs.metadata(), limits)) return invalid(*e);
    const auto& inputs = obs.tensors();
    if (inputs.size() > limits.max_tensors)
      return invalid("tensors: " + std::to_string(inputs.size()) + " tensors, limit is " +
                     std::to_string(limits.max_tensors));

    inferential::pb::Observation env;
    env.mutable_client()->set_id(f.client_id);
    if (!f.client_type.empty()) env.mutable_client()->set_type(f.client_type);
    env.set_timestamp_ns(f.timestamp_ns);
    env.set_urgency(obs.urgency());
    env.set_model_id(f.model_id);
    if (obs.steps_remaining()) env.set_steps_remaining(*obs.steps_remaining());
    for (const auto& [k, v] : obs.metadata()) (*env.mutable_metadata())[k] = v;
    if (f.describe) (*env.mutable_metadata())[kDescribeKey] = "1";
    env.set_priority(obs.priority().value_or(f.priority));
    env.set_request_id(f.request_id);
    env.set_protocol_version(kProtocolVersion);
    env.set_latency_budget_ms(f.latency_budget_ms);
    if (obs.deadline_ns()) env.set_deadline_ns(*obs.deadline_ns());
    if (obs.actions_remaining()) env.set_actions_remaining(*obs.actions_remaining());
    if (obs.control_rate_hz()) env.set_control_rate_hz(*obs.control_rate_hz());
    if (obs.control_step()) env.set_control_step(*obs.control_step());
    if (!f.auth_token.empty()) env.set_auth_token(f.auth_token);

    std::vector<zmq::message_t> payload;
    std::vector<std::byte> small;  // small tensors, joined
    std::uint64_t done = 0;        // bytes in the finished payload frames
    std::uint64_t payload_bytes = 0;
    std::set<std::string> keys;
    auto flush_small = [&] {
      if (small.empty()) return;
      payload.emplace_back(small.data(), small.size());
      done += small.size();
      small.clear();
    };

    for (std::size_t i = 0; i < inputs.size(); ++i) {
      const TensorInput& t = inputs[i];
      const std::string at = where(i, t.key);
      if (auto e = check_text("key", t.key, limits.max_key_bytes, true)) return invalid(at + ": " + *e);
      if (!keys.insert(t.key).second) return invalid(at + ": duplicate key");
      if (obs.metadata().count(t.key)) return invalid(at + ": key is also a metadata key");
      const auto item = item_size(t.dtype);
      if (!item) return invalid(at + ": unknown or unspecified dtype " + dtype_name(t.dtype));
      std::uint64_t need = 0;
      if (auto e = check_shape(t.shape, *item, limits, &need)) return invalid(at + ": " + *e);
      if (need != t.size_bytes)
        return invalid(at + ": shape needs " + std::to_string(need) + " bytes of " + dtype_name(t.dtype) +
                       " but " + std::to_string(t.size_bytes) + " were given");
      if (t.size_bytes && !t.data) return invalid(at + ": no data");
      if (t.dtype == DType::boolean && !bool_bytes_valid(t.data, t.size_bytes))
        return invalid(at + ": BOOL bytes must be 0 or 1");
      if (add_overflows(payload_bytes, t.size_bytes, &payload_bytes) || payload_bytes > limits.max_message_bytes)
        return invalid("observation: tensors exceed the " + std::to_string(limits.max_message_bytes) +
                       "-byte message limit");

      std::uint64_t offset;
      if (t.size_bytes <= kSmallTensorBytes || f.single_payload_frame) {
        // Zero padding so the tensor starts at a multiple of its item size in this frame.
        small.resize((small.size() + *item - 1) / *item * *item);
        offset = done + small.size();
        if (t.size_bytes) small.insert(small.end(), t.data, t.data + t.size_bytes);
      } else {
        flush_small();
        offset = done;
        if (t.owner) {
          auto* hint = new std::shared_ptr<const void>(t.owner);
          // libzmq takes a non-const pointer but never writes into a message it sends.
          payload.emplace_back(const_cast<std::byte*>(t.data), t.size_bytes, &release_owner, hint);
        } else {
          payload.emplace_back(t.data, t.size_bytes);
        }
        done += t.size_bytes;
      }
      auto* d = env.add_tensors();
      d->set_key(t.key);
      d->set_dtype(static_cast<inferential::pb::DType>(t.dtype));
      for (auto dim : t.shape) d->add_shape(dim);
      d->set_byte_offset(offset);
      d->set_byte_length(t.size_bytes);
      if (f.timestamp_ns) d->set_timestamp_ns(f.timestamp_ns);
      d->set_encoding(inferential::pb::RAW);
    }
    flush_small();
    if (f.single_payload_frame && payload.empty()) payload.emplace_back();  // 1.x servers read exactly one
    if (payload.size() > limits.max_payload_frames)
      return invalid("observation: " + std::to_string(payload.size()) + " payload frames, limit is " +
                     std::to_string(limits.max_payload_frames));

    const std::size_t env_size = env.ByteSizeLong();
    std::uint64_t total = 0;
    for (const auto& m : payload) total += m.size();
    if (env_size + total > limits.max_message_bytes)
      return invalid("observation: " + std::to_string(env_size + total) + " bytes, limit is " +
                     std::to_string(limits.max_message_bytes));

    std::vector<zmq::message_t> frames;
    frames.reserve(payload.size() + 2);
    frames.emplace_back();  // the empty delimiter
    zmq::message_t envelope(env_size);
    {
      // Deterministic: metadata (a map) is written in key order, so equal observations
      // give equal bytes.
      google::protobuf::io::ArrayOutputStream array(envelope.data(), static_cast<int>(env_size));
      google::protobuf::io::CodedOutputStream out(&array);
      out.SetSerializationDeterministic(true);
      env.SerializeWithCachedSizes(&out);
      if (out.HadError()) return Error{ErrorKind::internal, 0, false, 0, 0, {}, "envelope serialization failed"};
    }
    frames.push_back(std::move(envelope));
    for (auto& m : payload) frames.push_back(std::move(m));
    return frames;
  } catch (const std::exception& e) {
    return Error{ErrorKind::internal, 0, false, 0, 0, {}, std::string("encode_observation: ") + e.what()};
  } catch (...) {
    return Error{ErrorKind::internal, 0, false, 0, 0, {}, "encode_observation: unknown failure"};
  }
}

// --- frames -> reply -----------------------------------------------------------------

namespace {

struct Segment {
  std::uint64_t begin, end;
  const std::byte* data;
};

// The payload frame holding [begin, begin + length), or -1 when it spans two or none.
long segment_of(const std::vector<Segment>& segs, std::uint64_t begin, std::uint64_t length) {
  for (std::size_t i = 0; i < segs.size(); ++i) {
    const auto& s = segs[i];
    if ((s.begin <= begin && begin < s.end) || (length == 0 && s.begin <= begin && begin <= s.end))
      return begin + length <= s.end ? static_cast<long>(i) : -1;
  }
  return -1;
}

}  // namespace

Decoded decode_reply(std::vector<zmq::message_t> frames, const Limits& limits) noexcept {
  Decoded d;
  try {
    if (frames.size() < 2) {
      d.malformed = "frames: expected ['', envelope, payload...], got " + std::to_string(frames.size()) + " frame(s)";
      return d;
    }
    if (frames[0].size() != 0) {
      d.malformed = "frames[0]: the first frame must be the empty delimiter";
      return d;
    }
    if (frames.size() - 2 > limits.max_payload_frames) {
      d.malformed = "frames: " + std::to_string(frames.size() - 2) + " payload frames, limit is " +
                    std::to_string(limits.max_payload_frames);
      return d;
    }
    std::uint64_t total = 0;
    for (std::size_t i = 1; i < frames.size(); ++i) total += frames[i].size();
    if (total > limits.max_message_bytes || frames[1].size() > static_cast<std::size_t>(INT_MAX)) {
      d.malformed = "message: " + std::to_string(total) + " bytes, limit is " + std::to_string(limits.max_message_bytes);
      return d;
    }
    inferential::pb::ModelResponse resp;
    if (!resp.ParseFromArray(frames[1].data(), static_cast<int>(frames[1].size()))) {
      d.malformed = "envelope: not a valid ModelResponse";
      return d;
    }
    d.header_parsed = true;
    d.request_id = resp.request_id();
    d.model_id = resp.model_id();
    d.protocol_version = resp.protocol_version();
    d.status = resp.status();
    d.error = resp.error();

    std::map<std::string, std::string> metadata(resp.metadata().begin(), resp.metadata().end());
    if (auto e = check_metadata(metadata, limits)) {
      d.malformed = *e;
      return d;
    }
    const int n = resp.tensors_size();
    if (static_cast<std::size_t>(n) > limits.max_tensors) {
      d.malformed = "tensors: " + std::to_string(n) + " tensors, limit is " + std::to_string(limits.max_tensors);
      return d;
    }

    // From here on the frames are shared by every tensor view of the reply.
    auto held = std::make_shared<std::vector<zmq::message_t>>(std::move(frames));
    std::vector<Segment> segs;
    std::uint64_t start = 0;
    for (std::size_t i = 2; i < held->size(); ++i) {
      auto& m = (*held)[i];
      segs.push_back({start, start + m.size(), static_cast<const std::byte*>(m.data())});
      start += m.size();
    }

    Reply r;
    std::set<std::string> keys;
    for (int i = 0; i < n; ++i) {
      const auto& t = resp.tensors(i);
      const std::string at = where(static_cast<std::size_t>(i), t.key());
      auto fail = [&](const std::string& why) {
        d.malformed = at + ": " + why;
        return d;
      };
      if (auto e = check_text("key", t.key(), limits.max_key_bytes, true)) return fail(*e);
      if (!keys.insert(t.key()).second) return fail("duplicate key");
      if (metadata.count(t.key())) return fail("key is also a metadata key");
      const auto item = wire::item_size(t.dtype());
      if (!item) return fail("unknown or unspecified dtype " + dtype_name(static_cast<DType>(t.dtype())));
      if (t.encoding() != inferential::pb::RAW && t.encoding() != inferential::pb::ENCODING_UNSPECIFIED)
        return fail("encoding " + std::to_string(t.encoding()) + " is not supported");
      std::vector<std::int64_t> shape(t.shape().begin(), t.shape().end());
      std::uint64_t need = 0;
      if (auto e = check_shape(shape, *item, limits, &need)) return fail(*e);
      const std::uint64_t length = t.byte_length(), begin = t.byte_offset();
      if (need != length)
        return fail("shape needs " + std::to_string(need) + " bytes but byte_length is " + std::to_string(length));
      std::uint64_t end;
      if (add_overflows(begin, length, &end) || end > start)
        return fail("bytes [" + std::to_string(begin) + ", +" + std::to_string(length) + ") lie outside the " +
                    std::to_string(start) + "-byte payload");
      const std::byte* data = nullptr;
      if (length) {
        const long seg = segment_of(segs, begin, length);
        if (seg < 0) return fail("bytes span two payload frames");
        data = segs[static_cast<std::size_t>(seg)].data + (begin - segs[static_cast<std::size_t>(seg)].begin);
      }
      const auto dtype = static_cast<DType>(t.dtype());
      if (dtype == DType::boolean && !bool_bytes_valid(data, length)) return fail("BOOL bytes must be 0 or 1");
      // Typed reads need aligned storage: view the frame when it is aligned, else copy.
      const bool aligned = reinterpret_cast<std::uintptr_t>(data) % *item == 0;
      if (aligned) {
        r.tensors.emplace_back(t.key(), dtype, std::move(shape), data, length, true, held);
      } else {
        std::shared_ptr<std::uint64_t> copy(new std::uint64_t[(length + 7) / 8],
                                            std::default_delete<std::uint64_t[]>());
        std::memcpy(copy.get(), data, length);
        r.tensors.emplace_back(t.key(), dtype, std::move(shape), reinterpret_cast<const std::byte*>(copy.get()),
                               length, false, copy);
      }
    }

    const int raw = resp.status();
    r.status = raw == status::unspecified ? status::ok : raw;  // 1.x servers send no status
    r.request_id = resp.request_id();
    r.model_id = resp.model_id();
    r.client_id = resp.client().id();
    r.protocol_version = resp.protocol_version();
    r.retryable = resp.protocol_version() >= 2 ? resp.retryable() : wire::retryable(raw).value_or(false);
    r.error = resp.error();
    r.retry_after_ms = resp.retry_after_ms();
    if (resp.has_timing()) {
      const auto& tm = resp.timing();
      r.timing = Timing{tm.queue_wait_ms(), tm.inference_ms(), tm.total_ms(), tm.batch_size()};
    }
    r.inference_latency_ms = resp.inference_latency_ms();
    r.response_id = resp.response_id();
    r.timestamp_ns = resp.timestamp_ns();
    r.observation_timestamp_ns = resp.observation_timestamp_ns();
    if (resp.has_first_action_step()) r.first_action_step = resp.first_action_step();
    r.action_period_ms = resp.action_period_ms();
    r.predicted_delay_steps = resp.predicted_delay_steps();
    r.actual_delay_steps = resp.actual_delay_steps();
    if (resp.valid_until_ns() != 0) r.valid_until_ns = resp.valid_until_ns();
    r.metadata = std::move(metadata);
    d.reply = std::move(r);
    return d;
  } catch (const std::exception& e) {
    d.reply.reset();
    d.malformed = std::string("decode failed: ") + e.what();
    return d;
  } catch (...) {
    d.reply.reset();
    d.malformed = "decode failed";
    return d;
  }
}

std::optional<Error> error_for_reply(const Reply& reply) {
  if (reply.status == status::ok || reply.status == status::unspecified) return std::nullopt;
  Error e;
  e.kind = error_kind_for_status(reply.status);
  e.status = reply.status;
  e.retryable = reply.retryable;
  e.retry_after_ms = reply.retry_after_ms;
  e.request_id = reply.request_id;
  e.model_id = reply.model_id;
  e.message = reply.error;  // the server's text; to_string() names the status
  return e;
}

}  // namespace inferential

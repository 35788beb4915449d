// The codec without sockets: observation -> frames, frames -> Reply, every rule.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "inferential.pb.h"
#include "inferential/envelope.hpp"
#include "inferential/options.hpp"

namespace inf = inferential;
namespace pb = inferential::pb;

namespace {

std::vector<zmq::message_t> frames_of(const pb::ModelResponse& resp, const std::vector<std::string>& payload) {
  std::vector<zmq::message_t> frames;
  frames.emplace_back();
  std::string env = resp.SerializeAsString();
  frames.emplace_back(env.data(), env.size());
  for (const auto& p : payload) frames.emplace_back(p.data(), p.size());
  return frames;
}

pb::ModelResponse ok_reply(std::uint64_t rid = 7) {
  pb::ModelResponse r;
  r.mutable_client()->set_id("r1");
  r.set_model_id("m");
  r.set_request_id(rid);
  r.set_status(pb::OK);
  r.set_protocol_version(2);
  return r;
}

pb::Tensor* add(pb::ModelResponse& r, const std::string& key, pb::DType dtype, std::vector<std::int64_t> shape,
                std::uint64_t offset, std::uint64_t length) {
  auto* t = r.add_tensors();
  t->set_key(key);
  t->set_dtype(dtype);
  for (auto d : shape) t->add_shape(d);
  t->set_byte_offset(offset);
  t->set_byte_length(length);
  t->set_encoding(pb::RAW);
  return t;
}

template <class T>
std::string bytes_of(std::initializer_list<T> values) {
  std::string out(values.size() * sizeof(T), '\0');
  std::memcpy(out.data(), values.begin(), out.size());
  return out;
}

inf::EnvelopeFields fields() {
  inf::EnvelopeFields f;
  f.client_id = "r1";
  f.model_id = "m";
  f.request_id = 1;
  f.timestamp_ns = 1700000000000000000ull;
  f.latency_budget_ms = 50;
  f.priority = 1;
  return f;
}

pb::Observation parse_obs(const std::vector<zmq::message_t>& frames) {
  pb::Observation obs;
  EXPECT_TRUE(obs.ParseFromArray(frames.at(1).data(), static_cast<int>(frames.at(1).size())));
  return obs;
}

std::string hex(const zmq::message_t& m) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < m.size(); ++i) {
    auto b = static_cast<const unsigned char*>(m.data())[i];
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

inf::Error encode_error(const inf::Observation& obs, inf::EnvelopeFields f = fields(), inf::Limits limits = {}) {
  auto r = inf::encode_observation(f, obs, limits);
  EXPECT_FALSE(r.ok());
  return r.ok() ? inf::Error{} : r.error();
}

}  // namespace

// --- encoding ---

TEST(Encode, WorkedExampleOfTheSpecIsByteExact) {
  const float x[] = {1.0f, 2.0f};
  inf::Observation obs;
  obs.tensor("x", {2}, x, 2);
  auto frames = inf::encode_observation(fields(), obs, {});
  ASSERT_TRUE(frames.ok()) << frames.error().message;
  ASSERT_EQ(frames->size(), 3u);
  EXPECT_EQ((*frames)[0].size(), 0u);
  EXPECT_EQ(hex((*frames)[1]),
            "0a040a027231"
            "108080a8b1e39fe7cb17"
            "22160a017810021a010228083080" "80a8b1e39fe7cb173801"
            "2a016d"
            "4001"
            "4801"
            "5002"
            "5d00004842");
  EXPECT_EQ(hex((*frames)[2]), "0000803f00000040");
}

TEST(Encode, SmallTensorsShareAFrameEachAlignedToItsItemSize) {
  const std::uint8_t a[3] = {1, 2, 3};
  const double b[2] = {1.5, -2.0};
  const std::int16_t c[1] = {-7};
  inf::Observation obs;
  obs.tensor("a", {3}, a, 3).tensor("b", {2}, b, 2).tensor("c", {}, c, 1);
  auto frames = inf::encode_observation(fields(), obs, {});
  ASSERT_TRUE(frames.ok());
  ASSERT_EQ(frames->size(), 3u);
  auto env = parse_obs(*frames);
  ASSERT_EQ(env.tensors_size(), 3);
  EXPECT_EQ(env.tensors(0).byte_offset(), 0u);
  EXPECT_EQ(env.tensors(1).byte_offset(), 8u);  // padded from 3 to a multiple of 8
  EXPECT_EQ(env.tensors(2).byte_offset(), 24u);
  EXPECT_EQ(env.tensors(2).shape_size(), 0);  // a 0-d tensor
  const auto* p = static_cast<const unsigned char*>((*frames)[2].data());
  EXPECT_EQ((*frames)[2].size(), 26u);
  EXPECT_EQ(p[3], 0u);  // zero padding
  double got;
  std::memcpy(&got, p + 8, 8);
  EXPECT_EQ(got, 1.5);
}

TEST(Encode, LargeTensorIsItsOwnFrameAndSmallOnesAroundItAreJoined) {
  std::vector<std::uint8_t> image(224 * 224 * 3, 9);
  const float s[7] = {1, 2, 3, 4, 5, 6, 7};
  const std::int64_t t[1] = {42};
  inf::Observation obs;
  obs.tensor("s", {7}, s, 7).tensor("image", {224, 224, 3}, image).tensor("t", {1}, t, 1);
  auto frames = inf::encode_observation(fields(), obs, {});
  ASSERT_TRUE(frames.ok());
  ASSERT_EQ(frames->size(), 5u);  // delimiter, envelope, [s], [image], [t]
  EXPECT_EQ((*frames)[2].size(), 28u);
  EXPECT_EQ((*frames)[3].size(), image.size());
  EXPECT_NE((*frames)[3].data(), static_cast<const void*>(image.data()));  // copied: no owner given
  auto env = parse_obs(*frames);
  EXPECT_EQ(env.tensors(1).byte_offset(), 28u);
  EXPECT_EQ(env.tensors(2).byte_offset(), 28u + image.size());
}

TEST(Encode, SharedTensorIsSentWithoutACopyAndItsOwnerReleasedWithTheFrame) {
  auto image = std::make_shared<const std::vector<std::uint8_t>>(5000, 3);
  std::weak_ptr<const std::vector<std::uint8_t>> watch = image;
  {
    inf::Observation obs;
    obs.tensor_shared<std::uint8_t>("image", {5000}, image);
    image.reset();
    auto frames = inf::encode_observation(fields(), obs, {});
    ASSERT_TRUE(frames.ok());
    EXPECT_EQ((*frames)[2].data(), static_cast<const void*>(watch.lock()->data()));
  }
  EXPECT_TRUE(watch.expired());
}

TEST(Encode, SinglePayloadFrameJoinsEverythingForOneDotXServers) {
  std::vector<std::uint8_t> image(5000, 1);
  const float s[2] = {1, 2};
  auto f = fields();
  f.single_payload_frame = true;
  inf::Observation obs;
  obs.tensor("image", {5000}, image).tensor("s", {2}, s, 2);
  auto frames = inf::encode_observation(f, obs, {});
  ASSERT_TRUE(frames.ok());
  ASSERT_EQ(frames->size(), 3u);
  EXPECT_EQ((*frames)[2].size(), 5008u);
  auto none = inf::encode_observation(f, inf::Observation{}, {});
  ASSERT_TRUE(none.ok());
  ASSERT_EQ(none->size(), 3u);  // an empty payload frame
  EXPECT_EQ((*none)[2].size(), 0u);
}

TEST(Encode, NoTensorsMeansNoPayloadFrameAndZeroSizeTensorsAreValid) {
  auto frames = inf::encode_observation(fields(), inf::Observation{}, {});
  ASSERT_TRUE(frames.ok());
  EXPECT_EQ(frames->size(), 2u);
  inf::Observation obs;
  obs.tensor("empty", inf::DType::float32, {0, 3}, nullptr, 0);
  auto z = inf::encode_observation(fields(), obs, {});
  ASSERT_TRUE(z.ok()) << z.error().message;
  EXPECT_EQ(parse_obs(*z).tensors(0).byte_length(), 0u);
}

TEST(Encode, EveryFieldOfTheObservationIsWritten) {
  auto f = fields();
  f.client_type = "arm";
  f.auth_token = "secret";
  inf::Observation obs;
  obs.metadata("k", "v").urgency(0.5f).steps_remaining(3).priority(0).deadline_ns(123).actions_remaining(4).control_rate_hz(50);
  auto frames = inf::encode_observation(f, obs, {});
  ASSERT_TRUE(frames.ok());
  auto env = parse_obs(*frames);
  EXPECT_EQ(env.client().type(), "arm");
  EXPECT_EQ(env.auth_token(), "secret");
  EXPECT_EQ(env.metadata().at("k"), "v");
  EXPECT_EQ(env.urgency(), 0.5f);
  EXPECT_TRUE(env.has_steps_remaining());
  EXPECT_EQ(env.steps_remaining(), 3u);
  EXPECT_EQ(env.priority(), 0u);
  EXPECT_EQ(env.deadline_ns(), 123u);
  EXPECT_EQ(env.actions_remaining(), 4u);
  EXPECT_EQ(env.control_rate_hz(), 50.0f);
  EXPECT_EQ(env.protocol_version(), 2u);
}

TEST(Encode, ControlStepIsSentWhenSetZeroIncludedAndAbsentOtherwise) {
  auto with = inf::encode_observation(fields(), inf::Observation().control_step(1234).actions_remaining(5), {});
  ASSERT_TRUE(with.ok());
  auto env = parse_obs(*with);
  ASSERT_TRUE(env.has_control_step());
  EXPECT_EQ(env.control_step(), 1234u);
  // Step 0 is a real step (the first one), not "unset": proto3 optional keeps it.
  auto zero = inf::encode_observation(fields(), inf::Observation().control_step(0), {});
  ASSERT_TRUE(zero.ok());
  env = parse_obs(*zero);
  EXPECT_TRUE(env.has_control_step());
  EXPECT_EQ(env.control_step(), 0u);
  auto without = inf::encode_observation(fields(), inf::Observation(), {});
  ASSERT_TRUE(without.ok());
  EXPECT_FALSE(parse_obs(*without).has_control_step());
}

TEST(Encode, RefusesEveryBrokenRuleLocally) {
  const float two[2] = {1, 2};
  using K = inf::ErrorKind;
  auto kind = [](const inf::Observation& o) { return encode_error(o).kind; };
  EXPECT_EQ(kind(inf::Observation().tensor("x", inf::DType::float32, {3}, two, 8)), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().tensor("", {2}, two, 2)), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().tensor("x", {2}, two, 2).tensor("x", {2}, two, 2)), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().tensor("x", {2}, two, 2).metadata("x", "v")), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().tensor("x", inf::DType::unspecified, {2}, two, 8)), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().tensor("x", inf::DType::float32, {-1}, two, 0)), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().tensor("x", inf::DType::float32, {1, 1, 1, 1, 1, 1, 1, 1, 1}, two, 4)),
            K::invalid_argument);
  const std::int64_t big = std::numeric_limits<std::int64_t>::max();
  EXPECT_EQ(kind(inf::Observation().tensor("x", inf::DType::float64, {big, big}, two, 8)), K::invalid_argument);
  const std::uint8_t not_bool[2] = {1, 2};
  EXPECT_EQ(kind(inf::Observation().tensor("b", inf::DType::boolean, {2}, not_bool, 2)), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().tensor(std::string(257, 'k'), {2}, two, 2)), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().tensor("\xff", {2}, two, 2)), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().metadata("k", std::string(4097, 'v'))), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().metadata("", "v")), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().urgency(std::numeric_limits<float>::quiet_NaN())), K::invalid_argument);
  EXPECT_EQ(kind(inf::Observation().control_rate_hz(-1)), K::invalid_argument);
  inf::Observation many;
  for (int i = 0; i < 65; ++i) many.tensor("t" + std::to_string(i), {2}, two, 2);
  EXPECT_EQ(kind(many), K::invalid_argument);
  inf::Observation meta;
  for (int i = 0; i < 65; ++i) meta.metadata("k" + std::to_string(i), "v");
  EXPECT_EQ(kind(meta), K::invalid_argument);
  auto f = fields();
  f.model_id = "";
  EXPECT_EQ(encode_error(inf::Observation(), f).kind, K::invalid_argument);
  f = fields();
  f.auth_token = std::string(1025, 'a');
  EXPECT_EQ(encode_error(inf::Observation(), f).kind, K::invalid_argument);
  inf::Limits small;
  small.max_message_bytes = 1000;
  std::vector<std::uint8_t> image(2000, 0);
  EXPECT_EQ(encode_error(inf::Observation().tensor("i", {2000}, image), fields(), small).kind, K::invalid_argument);
}

// --- decoding ---

TEST(Decode, EveryDtypeRoundTripsThroughViews) {
  pb::ModelResponse r = ok_reply();
  std::string payload;
  auto put = [&](const std::string& key, pb::DType dtype, const std::string& bytes, std::size_t item) {
    while (payload.size() % item) payload.push_back('\0');
    add(r, key, dtype, {static_cast<std::int64_t>(bytes.size() / item)}, payload.size(), bytes.size());
    payload += bytes;
  };
  put("f16", pb::FLOAT16, bytes_of<std::uint16_t>({0x3C00, 0xC000}), 2);
  put("f32", pb::FLOAT32, bytes_of<float>({1.5f, -2.0f}), 4);
  put("f64", pb::FLOAT64, bytes_of<double>({3.25}), 8);
  put("bf16", pb::BFLOAT16, bytes_of<std::uint16_t>({inf::BFloat16::from_float(1.0f).bits}), 2);
  put("u8", pb::UINT8, bytes_of<std::uint8_t>({1, 255}), 1);
  put("i32", pb::INT32, bytes_of<std::int32_t>({-5, 6}), 4);
  put("i64", pb::INT64, bytes_of<std::int64_t>({-(1ll << 40)}), 8);
  put("b", pb::BOOL, bytes_of<std::uint8_t>({0, 1}), 1);
  put("i8", pb::INT8, bytes_of<std::int8_t>({-3}), 1);
  put("i16", pb::INT16, bytes_of<std::int16_t>({-300}), 2);
  put("u16", pb::UINT16, bytes_of<std::uint16_t>({60000}), 2);
  put("u32", pb::UINT32, bytes_of<std::uint32_t>({4000000000u}), 4);
  put("u64", pb::UINT64, bytes_of<std::uint64_t>({1ull << 63}), 8);
  auto d = inf::decode_reply(frames_of(r, {payload}), {});
  ASSERT_TRUE(d.reply) << d.malformed;
  const auto& rep = *d.reply;
  ASSERT_EQ(rep.tensors.size(), 13u);
  EXPECT_EQ((*rep.tensor("f16")->values<inf::Float16>())[1].bits, 0xC000);
  EXPECT_EQ((*rep.tensor("f32")->values<float>())[0], 1.5f);
  EXPECT_EQ((*rep.tensor("f64")->values<double>())[0], 3.25);
  EXPECT_EQ((*rep.tensor("bf16")->values<inf::BFloat16>())[0].to_float(), 1.0f);
  EXPECT_EQ((*rep.tensor("u8")->values<std::uint8_t>())[1], 255);
  EXPECT_EQ((*rep.tensor("i32")->values<std::int32_t>())[0], -5);
  EXPECT_EQ((*rep.tensor("i64")->values<std::int64_t>())[0], -(1ll << 40));
  EXPECT_EQ((*rep.tensor("b")->values<bool>())[1], true);
  EXPECT_EQ((*rep.tensor("i8")->values<std::int8_t>())[0], -3);
  EXPECT_EQ((*rep.tensor("i16")->values<std::int16_t>())[0], -300);
  EXPECT_EQ((*rep.tensor("u16")->values<std::uint16_t>())[0], 60000);
  EXPECT_EQ((*rep.tensor("u32")->values<std::uint32_t>())[0], 4000000000u);
  EXPECT_EQ((*rep.tensor("u64")->values<std::uint64_t>())[0], 1ull << 63);
  EXPECT_FALSE(rep.tensor("f32")->values<double>());  // wrong element type: no view
}

TEST(Decode, MisalignedTensorIsCopiedAlignedTensorIsAView) {
  pb::ModelResponse r = ok_reply();
  add(r, "x", pb::FLOAT64, {2}, 2, 16);  // offset 2: not a multiple of 8
  add(r, "y", pb::UINT8, {2}, 0, 2);
  std::string payload = std::string(2, '\x07') + bytes_of<double>({1.25, -8.5});
  auto d = inf::decode_reply(frames_of(r, {payload}), {});
  ASSERT_TRUE(d.reply) << d.malformed;
  const auto* x = d.reply->tensor("x");
  EXPECT_FALSE(x->aligned());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(x->data()) % 8, 0u);
  EXPECT_EQ((*x->values<double>())[1], -8.5);
  EXPECT_TRUE(d.reply->tensor("y")->aligned());
  EXPECT_EQ(x->to_vector<double>()->at(0), 1.25);
}

TEST(Decode, ViewsKeepTheReceivedFramesAlive) {
  inf::ReplyTensor kept;
  {
    pb::ModelResponse r = ok_reply();
    add(r, "x", pb::FLOAT32, {2}, 0, 8);
    auto d = inf::decode_reply(frames_of(r, {bytes_of<float>({4.0f, 5.0f})}), {});
    ASSERT_TRUE(d.reply);
    kept = d.reply->tensors.at(0);
  }
  EXPECT_EQ((*kept.values<float>())[1], 5.0f);
}

TEST(Decode, ZeroSizeTensorWithoutAnyPayloadFrameIsValid) {
  pb::ModelResponse r = ok_reply();
  add(r, "e", pb::FLOAT32, {0, 4}, 0, 0);
  auto d = inf::decode_reply(frames_of(r, {}), {});
  ASSERT_TRUE(d.reply) << d.malformed;
  EXPECT_EQ(d.reply->tensors.at(0).size_bytes(), 0u);
  EXPECT_EQ(d.reply->tensors.at(0).element_count(), 0u);
}

TEST(Decode, StatusRetryableAndTimingFollowTheSpec) {
  pb::ModelResponse v1;
  v1.set_model_id("m");
  auto d = inf::decode_reply(frames_of(v1, {""}), {});
  ASSERT_TRUE(d.reply);
  EXPECT_EQ(d.reply->status, inf::status::ok);  // 1.x: unspecified means OK
  EXPECT_FALSE(d.reply->timing);

  pb::ModelResponse q = ok_reply();
  q.set_status(pb::QUEUE_FULL);
  q.set_retryable(true);
  q.set_retry_after_ms(40);
  q.set_error("full");
  q.mutable_timing()->set_total_ms(1.5f);
  d = inf::decode_reply(frames_of(q, {}), {});
  ASSERT_TRUE(d.reply);
  ASSERT_TRUE(d.reply->timing);
  EXPECT_EQ(d.reply->timing->total_ms, 1.5f);
  auto err = inf::error_for_reply(*d.reply);
  ASSERT_TRUE(err);
  EXPECT_EQ(err->kind, inf::ErrorKind::queue_full);
  EXPECT_TRUE(err->retryable);
  EXPECT_EQ(err->retry_after_ms, 40u);
  EXPECT_EQ(err->message, "full");
  EXPECT_EQ(err->request_id, 7u);

  pb::ModelResponse old_me;  // 1.x MODEL_ERROR: retryable from the table
  old_me.set_status(pb::MODEL_ERROR);
  d = inf::decode_reply(frames_of(old_me, {}), {});
  EXPECT_TRUE(d.reply->retryable);

  pb::ModelResponse unknown = ok_reply();
  unknown.set_status(static_cast<pb::Status>(99));
  unknown.set_retryable(true);
  d = inf::decode_reply(frames_of(unknown, {}), {});
  ASSERT_TRUE(d.reply);
  err = inf::error_for_reply(*d.reply);
  ASSERT_TRUE(err);
  EXPECT_EQ(err->kind, inf::ErrorKind::unknown_status);
  EXPECT_EQ(err->status, 99);
  EXPECT_TRUE(err->retryable);
}

TEST(Decode, ChunkFieldsAreReadAndAbsentOnesStayEmpty) {
  pb::ModelResponse chunked = ok_reply();
  chunked.set_first_action_step(12);
  chunked.set_action_period_ms(20.0f);
  chunked.set_predicted_delay_steps(1.5f);
  chunked.set_actual_delay_steps(1.25f);
  chunked.set_valid_until_ns(1700000000320000000ull);
  auto d = inf::decode_reply(frames_of(chunked, {}), {});
  ASSERT_TRUE(d.reply);
  ASSERT_TRUE(d.reply->first_action_step);
  EXPECT_EQ(*d.reply->first_action_step, 12u);
  EXPECT_EQ(d.reply->action_period_ms, 20.0f);
  EXPECT_EQ(d.reply->predicted_delay_steps, 1.5f);
  EXPECT_EQ(d.reply->actual_delay_steps, 1.25f);
  ASSERT_TRUE(d.reply->valid_until_ns);
  EXPECT_EQ(*d.reply->valid_until_ns, 1700000000320000000ull);

  // A step 0 echoed is present; a valid_until_ns of 0 means "none".
  pb::ModelResponse first = ok_reply();
  first.set_first_action_step(0);
  first.set_valid_until_ns(0);
  d = inf::decode_reply(frames_of(first, {}), {});
  ASSERT_TRUE(d.reply);
  ASSERT_TRUE(d.reply->first_action_step);
  EXPECT_EQ(*d.reply->first_action_step, 0u);
  EXPECT_FALSE(d.reply->valid_until_ns);

  d = inf::decode_reply(frames_of(ok_reply(), {}), {});
  ASSERT_TRUE(d.reply);
  EXPECT_FALSE(d.reply->first_action_step);
  EXPECT_FALSE(d.reply->valid_until_ns);
  EXPECT_EQ(d.reply->action_period_ms, 0.0f);
  EXPECT_EQ(d.reply->predicted_delay_steps, 0.0f);
  EXPECT_EQ(d.reply->actual_delay_steps, 0.0f);
}

TEST(Options, CurveKeysComeTogetherAsZ85OrNotAtAll) {
  ASSERT_TRUE(inf::curve_available()) << "Debian's libzmq is built with libsodium";
  char server_public[41], server_secret[41], client_public[41], client_secret[41];
  ASSERT_EQ(zmq_curve_keypair(server_public, server_secret), 0);
  ASSERT_EQ(zmq_curve_keypair(client_public, client_secret), 0);
  inf::Options o;
  o.curve_server_key = server_public;
  o.curve_public_key = client_public;
  o.curve_secret_key = client_secret;
  EXPECT_TRUE(inf::validate(o).ok());

  auto refused = [](const inf::Options& bad) {
    auto v = inf::validate(bad);
    return !v.ok() && v.error().kind == inf::ErrorKind::invalid_argument;
  };
  inf::Options missing = o;
  missing.curve_secret_key.reset();
  EXPECT_TRUE(refused(missing));
  inf::Options only_server;
  only_server.curve_server_key = server_public;
  EXPECT_TRUE(refused(only_server));
  inf::Options short_key = o;
  short_key.curve_public_key = std::string(client_public).substr(0, 39);
  EXPECT_TRUE(refused(short_key));
  inf::Options not_z85 = o;
  not_z85.curve_server_key = std::string(40, ' ');  // 40 characters, none in the Z85 alphabet
  EXPECT_TRUE(refused(not_z85));
  // The message names the option, never the secret itself.
  inf::Options bad_secret = o;
  bad_secret.curve_secret_key = std::string(client_secret).substr(0, 39) + "~";
  auto v = inf::validate(bad_secret);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.error().message.find("curve_secret_key"), std::string::npos);
  EXPECT_EQ(v.error().message.find(std::string(client_secret).substr(0, 39)), std::string::npos);
}

TEST(Decode, FramingErrorsAreMalformedWithoutAHeader) {
  std::vector<zmq::message_t> one;
  one.emplace_back();
  auto d = inf::decode_reply(std::move(one), {});
  EXPECT_FALSE(d.header_parsed);
  EXPECT_FALSE(d.malformed.empty());

  auto frames = frames_of(ok_reply(), {});
  frames[0] = zmq::message_t("x", 1);
  d = inf::decode_reply(std::move(frames), {});
  EXPECT_FALSE(d.header_parsed);
  EXPECT_FALSE(d.reply);

  std::vector<zmq::message_t> garbage;
  garbage.emplace_back();
  garbage.emplace_back("\xff\xff\xff", 3);
  d = inf::decode_reply(std::move(garbage), {});
  EXPECT_FALSE(d.header_parsed);
  EXPECT_FALSE(d.reply);

  inf::Limits tiny;
  tiny.max_message_bytes = 10;
  d = inf::decode_reply(frames_of(ok_reply(), {std::string(20, 'a')}), tiny);
  EXPECT_FALSE(d.reply);
}

TEST(Decode, EveryDescriptorRuleMakesItMalformedWithTheHeaderKept) {
  const std::string p8(8, '\0');
  auto malformed = [&](auto edit, std::vector<std::string> payload) {
    pb::ModelResponse r = ok_reply(9);
    edit(r);
    auto d = inf::decode_reply(frames_of(r, payload), {});
    EXPECT_TRUE(d.header_parsed);
    EXPECT_EQ(d.request_id, 9u);
    EXPECT_FALSE(d.reply);
    return d.malformed;
  };
  EXPECT_NE(malformed([](auto& r) { add(r, "x", pb::FLOAT32, {3}, 0, 8); }, {p8}), "");
  EXPECT_NE(malformed([](auto& r) { add(r, "x", pb::FLOAT32, {2}, 4, 8); }, {p8}), "");  // outside
  EXPECT_NE(malformed([](auto& r) { add(r, "x", pb::FLOAT32, {2}, 4, 8); }, {p8, p8}), "");  // straddles
  EXPECT_NE(malformed([](auto& r) { add(r, "", pb::FLOAT32, {2}, 0, 8); }, {p8}), "");
  EXPECT_NE(malformed([](auto& r) { add(r, "x", pb::DTYPE_UNSPECIFIED, {2}, 0, 8); }, {p8}), "");
  EXPECT_NE(malformed([](auto& r) { add(r, "x", static_cast<pb::DType>(77), {2}, 0, 8); }, {p8}), "");
  EXPECT_NE(malformed([](auto& r) { add(r, "x", pb::FLOAT32, {2}, 0, 8)->set_encoding(pb::JPEG); }, {p8}), "");
  EXPECT_NE(malformed([](auto& r) { add(r, "x", pb::FLOAT32, {-2}, 0, 8); }, {p8}), "");
  EXPECT_NE(malformed([](auto& r) { add(r, "x", pb::UINT8, {1, 1, 1, 1, 1, 1, 1, 1, 8}, 0, 8); }, {p8}), "");
  EXPECT_NE(malformed([](auto& r) {
              add(r, "x", pb::UINT8, {4}, 0, 4);
              add(r, "x", pb::UINT8, {4}, 4, 4);
            }, {p8}), "");
  EXPECT_NE(malformed([](auto& r) {
              add(r, "x", pb::UINT8, {8}, 0, 8);
              (*r.mutable_metadata())["x"] = "v";
            }, {p8}), "");
  EXPECT_NE(malformed([](auto& r) { add(r, "b", pb::BOOL, {8}, 0, 8); }, {std::string(7, '\0') + "\x02"}), "");
  const std::int64_t big = std::numeric_limits<std::int64_t>::max();
  EXPECT_NE(malformed([&](auto& r) { add(r, "x", pb::FLOAT64, {big, big, 4}, 0, 0); }, {p8}), "");
  EXPECT_NE(malformed([](auto& r) { add(r, "x", pb::UINT8, {8}, ~0ull - 2, 8); }, {p8}), "");  // offset overflows
  EXPECT_NE(malformed([](auto& r) {
              for (int i = 0; i < 65; ++i) add(r, "t" + std::to_string(i), pb::UINT8, {0}, 0, 0);
            }, {}), "");
  EXPECT_NE(malformed([](auto& r) {
              for (int i = 0; i < 65; ++i) (*r.mutable_metadata())["k" + std::to_string(i)] = "v";
            }, {}), "");
  EXPECT_NE(malformed([](auto& r) { (*r.mutable_metadata())["k"] = std::string(4097, 'v'); }, {}), "");
}

TEST(Decode, EncodedObservationTensorsDecodeBackToTheSameBytes) {
  // The encoder's layout, read by the decoder's rules (an Observation and a
  // ModelResponse share the Tensor descriptor): every tensor comes back.
  std::vector<float> big(1000);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i) * 0.5f;
  const std::uint8_t small[3] = {1, 2, 3};
  const std::int64_t after[2] = {-1, 1};
  inf::Observation obs;
  obs.tensor("small", {3}, small, 3).tensor("big", {10, 100}, big).tensor("after", {2}, after, 2);
  auto frames = inf::encode_observation(fields(), obs, {});
  ASSERT_TRUE(frames.ok());
  auto env = parse_obs(*frames);
  pb::ModelResponse r = ok_reply();
  *r.mutable_tensors() = env.tensors();
  std::vector<std::string> payload;
  for (std::size_t i = 2; i < frames->size(); ++i) payload.push_back((*frames)[i].to_string());
  auto d = inf::decode_reply(frames_of(r, payload), {});
  ASSERT_TRUE(d.reply) << d.malformed;
  EXPECT_EQ(d.reply->tensor("big")->to_vector<float>().value(), big);
  EXPECT_EQ((*d.reply->tensor("after")->values<std::int64_t>())[0], -1);
  EXPECT_EQ(d.reply->tensor("big")->shape(), (std::vector<std::int64_t>{10, 100}));
}

// The client against the real Python server, started by the test.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include <zmq.hpp>

#include "inferential/inferential.hpp"
#include "server_process.hpp"

namespace inf = inferential;
using testing_support::ServerProcess;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

class Integration : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // A known robot with its own token exercises UNAUTHENTICATED; everyone else is accepted.
    config_path_ = "/tmp/inferential-cpp-test-" + std::to_string(::getpid()) + ".yaml";
    std::ofstream(config_path_) << "clients:\n  known:\n    - {id: secure-bot, auth_token: right-token}\n";
    auto args = testing_support::test_models();
    args.insert(args.end(), {"--config", config_path_});
    server_ = new ServerProcess(args);
    started_ = server_->start();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    std::remove(config_path_.c_str());
  }
  void SetUp() override { ASSERT_TRUE(started_) << "the Python server did not start"; }

  static inf::Connection connect(inf::Options o = {}) {
    o.endpoint = server_->endpoint();
    if (!o.client_id) o.client_id = "cpp-test";
    auto c = inf::Connection::create(o);
    EXPECT_TRUE(c.ok()) << c.error().to_string();
    return std::move(c).value();
  }
  static inf::Model model(const inf::Connection& c, const std::string& id) {
    auto m = c.model(id);
    EXPECT_TRUE(m.ok());
    return std::move(m).value();
  }

  static inline ServerProcess* server_ = nullptr;
  static inline bool started_ = false;
  static inline std::string config_path_;
};

}  // namespace

TEST_F(Integration, RequestRoundTripsTensorsAndMetadataThroughEcho) {
  auto conn = connect();
  auto echo = model(conn, "echo");
  const float x[3] = {1.5f, -2.0f, 3.25f};
  std::vector<std::uint8_t> image(224 * 224 * 3);
  for (std::size_t i = 0; i < image.size(); ++i) image[i] = static_cast<std::uint8_t>(i * 7);
  auto reply = echo.request(inf::Observation().tensor("x", {3}, x, 3).tensor("image", {224, 224, 3}, image).metadata("note", "hi"), 5000);
  ASSERT_TRUE(reply.ok()) << reply.error().to_string();
  EXPECT_EQ(reply->status, inf::status::ok);
  EXPECT_EQ(reply->model_id, "echo");
  EXPECT_EQ(reply->client_id, "cpp-test");
  EXPECT_EQ(reply->protocol_version, 2u);
  EXPECT_TRUE(reply->timing);
  EXPECT_GT(*reply->round_trip_ms, 0.0);
  EXPECT_EQ(reply->metadata.at("note"), "hi");
  auto xs = reply->tensor("x")->to_vector<float>();
  ASSERT_TRUE(xs);
  EXPECT_EQ(*xs, std::vector<float>(x, x + 3));
  EXPECT_EQ(reply->tensor("image")->to_vector<std::uint8_t>().value(), image);
  EXPECT_EQ(reply->tensor("image")->shape(), (std::vector<std::int64_t>{224, 224, 3}));
}

TEST_F(Integration, EveryDtypeRoundTripsThroughEcho) {
  auto conn = connect();
  auto echo = model(conn, "echo");
  for (int v = 1; v <= 13; ++v) {
    const auto dtype = static_cast<inf::DType>(v);
    const std::size_t item = *inf::item_size(dtype);
    std::vector<std::uint8_t> bytes(3 * item);
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(i % 2);  // valid BOOL too
    auto reply = echo.request(inf::Observation().tensor("t", dtype, {3}, bytes.data(), bytes.size()), 5000);
    ASSERT_TRUE(reply.ok()) << inf::dtype_name(dtype) << ": " << reply.error().to_string();
    const auto* t = reply->tensor("t");
    ASSERT_NE(t, nullptr);
    // Without ml_dtypes the server holds BFLOAT16 as its uint16 bits and echoes them as UINT16.
    if (dtype == inf::DType::bfloat16 && t->dtype() == inf::DType::uint16)
      std::fprintf(stderr, "note: the server echoed BFLOAT16 as UINT16 (no ml_dtypes)\n");
    else
      EXPECT_EQ(t->dtype(), dtype) << inf::dtype_name(dtype);
    ASSERT_EQ(t->size_bytes(), bytes.size());
    EXPECT_EQ(std::memcmp(t->data(), bytes.data(), bytes.size()), 0) << inf::dtype_name(dtype);
  }
}

TEST_F(Integration, GetResultReturnsTheNewestReplyAndCountsTheRestStale) {
  auto conn = connect();
  auto noop = model(conn, "noop");
  std::uint64_t last = 0;
  for (int i = 0; i < 5; ++i) {
    auto rid = noop.observe(inf::Observation());
    ASSERT_TRUE(rid.ok()) << rid.error().to_string();
    last = *rid;
  }
  // Let every reply arrive, then read once: only the newest comes out.
  const auto t0 = Clock::now();
  while (conn.stats().received < 5 && ms_since(t0) < 5000) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto got = noop.get_result(1000);
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->request_id, last);
  EXPECT_EQ((*got)->tensor("actions")->element_count(), 7u);
  auto stats = conn.stats();
  EXPECT_EQ(stats.sent, 5u);
  EXPECT_EQ(stats.received, 5u);
  EXPECT_EQ(stats.stale_dropped + stats.by_status[inf::status::superseded], 4u);
  auto nothing = noop.get_result(0);
  ASSERT_TRUE(nothing.ok());
  EXPECT_FALSE(nothing->has_value());
}

TEST_F(Integration, ErrorStatusesBecomeErrorsOfTheirKind) {
  auto conn = connect();
  auto unknown = model(conn, "no-such-model").request(inf::Observation(), 5000);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().kind, inf::ErrorKind::unknown_model);
  EXPECT_EQ(unknown.error().status, inf::status::unknown_model);
  EXPECT_FALSE(unknown.error().retryable);
  EXPECT_GT(unknown.error().request_id, 0u);

  auto failing = model(conn, "failing");
  auto failed = failing.request(inf::Observation().metadata("fail", "yes"), 5000);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().kind, inf::ErrorKind::model_error);
  EXPECT_TRUE(failed.error().retryable);
  EXPECT_FALSE(failed.error().message.empty());

  auto fine = failing.request(inf::Observation(), 5000);
  ASSERT_TRUE(fine.ok()) << fine.error().to_string();

  // get_result raises the status the same way.
  ASSERT_TRUE(failing.observe(inf::Observation().metadata("fail", "yes")).ok());
  auto raised = failing.get_result(5000);
  ASSERT_FALSE(raised.ok());
  EXPECT_EQ(raised.error().kind, inf::ErrorKind::model_error);
  EXPECT_EQ(conn.stats().by_status[inf::status::model_error], 2u);
}

TEST_F(Integration, WrongAuthTokenIsUnauthenticatedRightOneIsServed) {
  inf::Options o;
  o.client_id = "secure-bot";
  o.auth_token = "wrong";
  auto bad = connect(o);
  auto denied = model(bad, "noop").request(inf::Observation(), 5000);
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.error().kind, inf::ErrorKind::unauthenticated);
  o.auth_token = "right-token";
  auto good = connect(o);
  auto served = model(good, "noop").request(inf::Observation(), 5000);
  EXPECT_TRUE(served.ok()) << served.error().to_string();
}

TEST_F(Integration, RequestWithNoReplyInTimeIsATimeoutAndItsLateReplyStale) {
  auto conn = connect();
  auto sleep = model(conn, "sleep");
  // Sleep's base time is 1 ms; a 0 ms wait cannot see its reply.
  auto r = sleep.request(inf::Observation(), 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, inf::ErrorKind::timeout);
  const auto t0 = Clock::now();
  while (conn.stats().received < 1 && ms_since(t0) < 5000) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(conn.stats().stale_dropped, 1u);
}

TEST_F(Integration, MovedConnectionAndModelsKeepWorking) {
  std::optional<inf::Model> kept;
  std::vector<inf::Connection> owners;
  {
    auto conn = connect();
    auto m = model(conn, "noop");
    kept.emplace(std::move(m));
    owners.push_back(std::move(conn));  // moved into a vector...
    inf::Connection again = std::move(owners.back());  // ...and out of it
    owners.pop_back();
    owners.push_back(std::move(again));
    EXPECT_TRUE(conn.closed());  // the moved-from one is empty
    EXPECT_EQ(conn.model("noop").error().kind, inf::ErrorKind::closed);
  }
  for (int i = 0; i < 20; ++i) owners.emplace_back(connect());  // the vector reallocates
  auto r = kept->request(inf::Observation(), 5000);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  inf::Model copy = *kept;
  auto r2 = copy.request(inf::Observation(), 5000);
  EXPECT_TRUE(r2.ok());
  EXPECT_EQ(owners.front().stats().sent, 2u);
  owners.clear();  // destroying the connection closes it: its models fail cleanly
  auto after = copy.observe(inf::Observation());
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.error().kind, inf::ErrorKind::closed);
}

TEST_F(Integration, ThreadsShareOneConnectionSafely) {
  auto conn = connect();
  auto echo = model(conn, "echo");
  auto noop = model(conn, "noop");
  constexpr int kEach = 40;
  std::atomic<int> ok{0}, routed{0};
  std::mutex failures_mutex;
  std::string failures;  // what went wrong, to read when the count is short
  auto worker = [&](const inf::Model& m, float tag) {
    for (int i = 0; i < kEach; ++i) {
      const float x[1] = {tag + static_cast<float>(i)};
      auto r = m.request(inf::Observation().tensor("x", {1}, x, 1), 5000);
      if (!r.ok()) {
        // The server's verdict on this very request is a correctly routed reply too: two
        // threads observing one model on one connection are one robot to the server, whose
        // default (edf) lets a newer observation supersede a queued one; a loaded machine
        // may make a request miss its budget.
        const auto kind = r.error().kind;
        if (kind == inf::ErrorKind::superseded || kind == inf::ErrorKind::deadline_unmeetable) {
          ++routed;
          continue;
        }
        std::lock_guard<std::mutex> lock(failures_mutex);
        failures += r.error().to_string() + "\n";
        continue;
      }
      // Each thread gets the reply to its own request, never the other's.
      if (m.model_id() == "echo" && (*r->tensor("x")->values<float>())[0] != x[0]) continue;
      ++ok;
      ++routed;
    }
  };
  std::thread a(worker, std::cref(echo), 1000.0f), b(worker, std::cref(noop), 0.0f), c(worker, std::cref(echo), 2000.0f);
  a.join();
  b.join();
  c.join();
  EXPECT_EQ(routed.load(), 3 * kEach) << failures;
  EXPECT_GE(ok.load(), kEach) << failures;  // at least a thread's worth served with its own values
  EXPECT_EQ(conn.stats().sent, 3u * kEach);
}

TEST_F(Integration, ServerInfoReportsTheProtocolVersionAndLimits) {
  auto conn = connect();
  auto info = conn.server_info(5000);
  ASSERT_TRUE(info.ok()) << info.error().to_string();
  EXPECT_EQ(info->protocol_version, inf::kProtocolVersion);
  EXPECT_EQ(info->server.rfind("inferential", 0), 0u) << info->server;
  const inf::Limits defaults;  // the test server runs with the spec's defaults, as the client does
  EXPECT_EQ(info->limits.max_message_bytes, defaults.max_message_bytes);
  EXPECT_EQ(info->limits.max_tensors, defaults.max_tensors);
  EXPECT_EQ(info->limits.max_id_bytes, defaults.max_id_bytes);
  EXPECT_EQ(info->limits.max_auth_token_bytes, defaults.max_auth_token_bytes);
  auto stats = conn.stats();
  EXPECT_EQ(stats.by_status[inf::status::ok], 1u);
  EXPECT_EQ(stats.unknown_dropped + stats.malformed_dropped, 0u);
}

TEST(ServerInfo, APeerThatNeverAnswersIsATimeout) {
  // Like a 1.x server: it takes the describe request and never answers it.
  zmq::context_t ctx;
  zmq::socket_t silent(ctx, zmq::socket_type::router);
  silent.set(zmq::sockopt::linger, 0);
  silent.bind("tcp://127.0.0.1:*");
  inf::Options o;
  o.endpoint = silent.get(zmq::sockopt::last_endpoint);
  auto c = inf::Connection::create(o);
  ASSERT_TRUE(c.ok());
  auto info = c->server_info(100);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.error().kind, inf::ErrorKind::timeout);
  EXPECT_EQ(c->stats().sent, 1u);
}

TEST_F(Integration, SocketOptionsAreThoseOfTheSpec) {
  auto conn = connect();
  auto o = conn.socket_options();
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->reconnect_ivl, 100);
  EXPECT_EQ(o->reconnect_ivl_max, 5000);
  // Liveness by TCP keepalive, never a ZMTP PING timer (protocol §8).
  EXPECT_EQ(o->heartbeat_ivl, 0);
  EXPECT_EQ(o->tcp_keepalive, 1);
  EXPECT_EQ(o->tcp_keepalive_idle, 1);
  EXPECT_EQ(o->tcp_keepalive_intvl, 1);
  EXPECT_EQ(o->tcp_keepalive_cnt, 5);
  EXPECT_EQ(o->tcp_maxrt, 5000);
  EXPECT_EQ(o->immediate, 1);
  EXPECT_EQ(o->sndtimeo, 1000);
  EXPECT_EQ(o->sndhwm, 100);
  EXPECT_EQ(o->rcvhwm, 100);
  EXPECT_EQ(o->linger, 0);
  EXPECT_EQ(o->maxmsgsize, 64 * 1024 * 1024);
  EXPECT_TRUE(o->routing_id.empty());
}

TEST(Options, ReconnectIntervalZeroIsRefused) {
  inf::Options o;
  o.reconnect_ivl_ms = 0;
  auto c = inf::Connection::create(o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().kind, inf::ErrorKind::invalid_argument);
  o.reconnect_ivl_ms = 200;
  o.reconnect_ivl_max_ms = 100;
  EXPECT_EQ(inf::Connection::create(o).error().kind, inf::ErrorKind::invalid_argument);
  o.reconnect_ivl_max_ms = 5000;
  o.client_id = "";
  EXPECT_EQ(inf::Connection::create(o).error().kind, inf::ErrorKind::invalid_argument);
  o.client_id.reset();
  auto generated = inf::Connection::create(o);
  ASSERT_TRUE(generated.ok());
  EXPECT_FALSE(generated->options().client_id->empty());  // "{host}-{pid}-{hex}"
}

TEST(Unavailable, SendWhileNoServerIsBoundedBySendTimeout) {
  inf::Options o;
  o.endpoint = "tcp://127.0.0.1:" + std::to_string(testing_support::free_port());
  o.send_timeout_ms = 150;
  auto c = inf::Connection::create(o);
  ASSERT_TRUE(c.ok());
  auto m = c->model("noop");
  ASSERT_TRUE(m.ok());
  const auto t0 = Clock::now();
  auto r = m->observe(inf::Observation());
  const double took = ms_since(t0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, inf::ErrorKind::server_unavailable);
  EXPECT_GE(took, 140.0);
  EXPECT_LT(took, 150.0 + 500.0);
  EXPECT_EQ(c->stats().send_failed, 1u);
  EXPECT_EQ(c->stats().sent, 0u);
}

TEST(Restart, ClientResumesAfterTheServerComesBack) {
  ServerProcess server(testing_support::test_models());
  ASSERT_TRUE(server.start());
  inf::Options o;
  o.endpoint = server.endpoint();
  o.client_id = "restart-bot";
  o.reconnect_ivl_ms = 20;
  o.reconnect_ivl_max_ms = 200;
  o.heartbeat_ivl_ms = 100;
  o.heartbeat_timeout_ms = 300;
  o.send_timeout_ms = 100;
  auto c = inf::Connection::create(o);
  ASSERT_TRUE(c.ok());
  auto m = c->model("noop");
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(m->request(inf::Observation(), 5000).ok());

  server.stop();
  // Wait until libzmq has noticed the peer is gone, then a send is refused in bounded time.
  bool refused = false;
  for (int i = 0; i < 50 && !refused; ++i) {
    const auto t0 = Clock::now();
    auto r = m->observe(inf::Observation());
    if (!r.ok()) {
      EXPECT_EQ(r.error().kind, inf::ErrorKind::server_unavailable);
      EXPECT_LT(ms_since(t0), 100.0 + 500.0);
      refused = true;
    }
  }
  EXPECT_TRUE(refused);

  ASSERT_TRUE(server.start());  // same port
  bool resumed = false;
  const auto t0 = Clock::now();
  while (!resumed && ms_since(t0) < 15000) {
    auto r = m->request(inf::Observation(), 500);
    resumed = r.ok();
    if (!resumed) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(resumed);
  std::fprintf(stderr, "resumed %.0f ms after the server was up again\n", ms_since(t0));
  // libzmq reconnects by itself after a network error: not a connection lost for good.
  EXPECT_EQ(c->stats().socket_resets, 0u);
}

namespace {

// A Z85 CURVE key pair from libzmq (what `inferential keys generate` makes).
struct KeyPair {
  std::string public_key, secret_key;
};
KeyPair curve_pair() {
  char pub[41] = {0}, sec[41] = {0};
  EXPECT_EQ(zmq_curve_keypair(pub, sec), 0);
  return {pub, sec};
}

inf::Model model_of(const inf::Connection& c, const std::string& id) {
  auto m = c.model(id);
  EXPECT_TRUE(m.ok());
  return std::move(m).value();
}

// A config file removed with the test.
struct TempConfig {
  std::string path;
  explicit TempConfig(const std::string& text, const char* tag)
      : path("/tmp/inferential-cpp-" + std::string(tag) + "-" + std::to_string(::getpid()) + ".yaml") {
    std::ofstream(path) << text;
  }
  ~TempConfig() { std::remove(path.c_str()); }
};

}  // namespace

// The real server with auth.curve_secret_key and one robot's public key listed: the right
// keys work (encrypted, under the id bound to the key); another id under that key is
// UNAUTHENTICATED; a wrong server key or an unlisted robot key never completes the
// handshake, so nothing is sent and observe() is server_unavailable within send_timeout_ms.
TEST(Curve, OnlyTheListedKeyWithTheRightServerKeyGetsThrough) {
  ASSERT_TRUE(inf::curve_available());
  const KeyPair server = curve_pair(), robot = curve_pair(), stranger = curve_pair(), other_server = curve_pair();
  TempConfig config("clients:\n  known:\n    - {id: curve-bot, curve_public_key: '" + robot.public_key +
                        "'}\nauth:\n  curve_secret_key: '" + server.secret_key + "'\n",
                    "curve");
  auto args = testing_support::test_models();
  args.insert(args.end(), {"--config", config.path});
  ServerProcess proc(args);
  ASSERT_TRUE(proc.start()) << "the Python server did not start with CURVE";

  auto connect_with = [&](const std::string& id, const std::string& server_key, const KeyPair& pair) {
    inf::Options o;
    o.endpoint = proc.endpoint();
    o.client_id = id;
    o.send_timeout_ms = 300;
    o.curve_server_key = server_key;
    o.curve_public_key = pair.public_key;
    o.curve_secret_key = pair.secret_key;
    auto c = inf::Connection::create(o);
    EXPECT_TRUE(c.ok()) << c.error().to_string();
    return std::move(c).value();
  };
  const float x[2] = {1.0f, 2.0f};

  auto good = connect_with("curve-bot", server.public_key, robot);
  auto reply = model_of(good, "echo").request(inf::Observation().tensor("x", {2}, x, 2), 5000);
  ASSERT_TRUE(reply.ok()) << reply.error().to_string();
  EXPECT_EQ(reply->client_id, "curve-bot");
  ASSERT_NE(reply->tensor("x"), nullptr);
  EXPECT_EQ(reply->tensor("x")->to_vector<float>(), (std::vector<float>{1.0f, 2.0f}));

  auto impostor = connect_with("someone-else", server.public_key, robot);
  auto refused = model_of(impostor, "echo").request(inf::Observation().tensor("x", {2}, x, 2), 5000);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, inf::ErrorKind::unauthenticated) << refused.error().to_string();

  for (auto* c : {&other_server, &stranger}) {
    const bool wrong_server = c == &other_server;
    auto conn = wrong_server ? connect_with("curve-bot", other_server.public_key, robot)
                             : connect_with("curve-bot", server.public_key, stranger);
    const auto t0 = Clock::now();
    auto sent = model_of(conn, "echo").observe(inf::Observation().tensor("x", {2}, x, 2));
    ASSERT_FALSE(sent.ok()) << (wrong_server ? "wrong server key" : "unlisted robot key");
    EXPECT_EQ(sent.error().kind, inf::ErrorKind::server_unavailable);
    EXPECT_LT(ms_since(t0), 300 + 1000.0);  // bounded by send_timeout_ms (+ scheduling slack)
    EXPECT_EQ(conn.stats().sent, 0u);
  }
}

// The chunk fields through the real server and its shipped chunked policy: the control step
// comes back as first_action_step, the period and validity follow from the control rate, and
// the queue places the chunk's rows at that step.
TEST(Chunks, ControlStepComesBackAsFirstActionStepAndTheQueueUsesIt) {
  ServerProcess proc({"--model", "chunked=inferential.models.chunked_policy:ChunkedPolicy"});
  ASSERT_TRUE(proc.start()) << "the Python server did not start with the chunked policy";
  inf::Options o;
  o.endpoint = proc.endpoint();
  o.client_id = "chunk-bot";
  auto conn = inf::Connection::create(o);
  ASSERT_TRUE(conn.ok()) << conn.error().to_string();
  auto policy = conn->model("chunked");
  ASSERT_TRUE(policy.ok());
  const std::vector<float> joints(7, 0.1f), target = {0.3f, -0.2f};
  const float rate_hz = 50.0f;
  const std::uint64_t step = 100;
  auto reply = policy->request(inf::Observation()
                                   .tensor("joints", {7}, joints)
                                   .tensor("target", {2}, target)
                                   .control_step(step)
                                   .actions_remaining(0)
                                   .control_rate_hz(rate_hz),
                               10000);
  ASSERT_TRUE(reply.ok()) << reply.error().to_string();
  ASSERT_TRUE(reply->first_action_step);
  EXPECT_EQ(*reply->first_action_step, step);
  EXPECT_FLOAT_EQ(reply->action_period_ms, 1000.0f / rate_hz);
  const inf::ReplyTensor* actions = reply->tensor("actions");
  ASSERT_NE(actions, nullptr);
  ASSERT_EQ(actions->shape().size(), 2u);
  const auto rows = static_cast<std::uint64_t>(actions->shape()[0]);
  // The server dates the actions: the observation's time plus the chunk's rows at our rate.
  ASSERT_TRUE(reply->valid_until_ns);
  EXPECT_EQ(*reply->valid_until_ns,
            reply->observation_timestamp_ns + static_cast<std::uint64_t>(static_cast<double>(rows) * 1e9 / rate_hz));

  inf::ChunkQueueOptions qo;
  qo.start_step = static_cast<std::int64_t>(step);
  auto queue = inf::ActionChunkQueue::create(qo);
  ASSERT_TRUE(queue.ok());
  auto added = queue->add_reply(*reply);
  ASSERT_TRUE(added.ok()) << added.error().to_string();
  EXPECT_EQ(*added, rows);
  EXPECT_EQ(queue->actions_remaining(), rows);  // valid for 320 ms from the observation: now
  auto first = queue->pop();
  ASSERT_TRUE(first);
  const auto row0 = actions->values<float>();
  ASSERT_EQ(first->size(), static_cast<std::size_t>(actions->shape()[1]));
  for (std::size_t j = 0; j < first->size(); ++j) EXPECT_EQ((*first)[j], static_cast<double>((*row0)[j]));
}

// --- ControlLoop -----------------------------------------------------------------------

TEST(ControlLoopCreate, BadOptionsAreRefused) {
  inf::Options o;
  o.endpoint = "tcp://127.0.0.1:" + std::to_string(testing_support::free_port());  // nobody there
  auto conn = inf::Connection::create(o);
  ASSERT_TRUE(conn.ok());
  auto m = model_of(*conn, "chunked");
  auto refused = [&](inf::ControlLoopOptions lo) {
    auto loop = inf::ControlLoop::create(m, std::move(lo));
    return !loop.ok() && loop.error().kind == inf::ErrorKind::invalid_argument;
  };
  inf::ControlLoopOptions lo;
  lo.rate_hz = 0;
  EXPECT_TRUE(refused(lo));
  lo.rate_hz = std::numeric_limits<double>::infinity();
  EXPECT_TRUE(refused(lo));
  lo = {};
  lo.reply_timeout_ms = 0;
  EXPECT_TRUE(refused(lo));
  lo = {};
  lo.queue.new_weight = 0;  // the queue's own check
  EXPECT_TRUE(refused(lo));
  lo = {};
  lo.prefix_input = std::string();
  EXPECT_TRUE(refused(lo));
  auto loop = inf::ControlLoop::create(m);
  ASSERT_TRUE(loop.ok());
  auto no_bound = loop->run([] { return inf::Observation(); }, [](const auto&) {});
  ASSERT_FALSE(no_bound.ok());
  EXPECT_EQ(no_bound.error().kind, inf::ErrorKind::invalid_argument);
}

// run()'s pacing on an injected clock, with no server: each refused observe() is counted
// and retried next step, every step is an underrun, and a step that takes longer than a
// whole period restarts the schedule (an overrun) instead of bursting to catch up.
TEST(ControlLoopRun, PacesOnItsClockCountsOverrunsAndRefusedSends) {
  inf::Options o;
  o.endpoint = "tcp://127.0.0.1:" + std::to_string(testing_support::free_port());
  o.send_timeout_ms = 0;  // refuse at once: no server is connected
  auto conn = inf::Connection::create(o);
  ASSERT_TRUE(conn.ok());
  auto now = std::make_shared<std::int64_t>(0);
  std::vector<std::int64_t> sleeps;
  inf::ControlLoopOptions lo;
  lo.rate_hz = 100;  // 10 ms periods
  const std::int64_t period = 10'000'000;
  lo.clock = [now] { return *now; };
  lo.sleep = [now, &sleeps](std::int64_t ns) {
    sleeps.push_back(ns);
    *now += ns;
  };
  auto loop = inf::ControlLoop::create(model_of(*conn, "chunked"), lo);
  ASSERT_TRUE(loop.ok());
  int acted = 0;
  auto stats = loop->run([] { return inf::Observation(); },
                         [&](const std::optional<std::vector<double>>& action) {
                           EXPECT_FALSE(action);
                           // Step 3 takes 2.5 periods: the schedule is a whole period late.
                           if (++acted == 3) *now += period * 5 / 2;
                         },
                         6);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->steps, 6u);
  EXPECT_EQ(stats->requests, 0u);
  EXPECT_EQ(stats->send_failed, 6u);
  ASSERT_TRUE(loop->last_error());
  EXPECT_EQ(loop->last_error()->kind, inf::ErrorKind::server_unavailable);
  EXPECT_EQ(loop->queue().stats().underruns, 6u);
  EXPECT_EQ(stats->overruns, 1u);
  // 6 steps, one of them overran (no sleep after it): 5 sleeps of one period each.
  EXPECT_EQ(sleeps, std::vector<std::int64_t>(5, period));

  // duration_s bounds it too: 0.05 s at 10 ms is 5 steps.
  auto timed = loop->run([] { return inf::Observation(); }, [](const auto&) {}, std::nullopt, 0.05);
  ASSERT_TRUE(timed.ok());
  EXPECT_EQ(timed->steps, 6u + 5u);
}

// The real server and its shipped chunked policy at 50 Hz: chunks come back at the step
// each observation was taken, the robot executes them (the first steps underrun while the
// first chunk is computed), and the queued prefix goes out with each new observation.
TEST(ControlLoopRun, RunsAChunkedPolicyAgainstTheRealServer) {
  ServerProcess proc({"--model", "chunked=inferential.models.chunked_policy:ChunkedPolicy"});
  ASSERT_TRUE(proc.start()) << "the Python server did not start with the chunked policy";
  inf::Options o;
  o.endpoint = proc.endpoint();
  o.client_id = "loop-bot";
  auto conn = inf::Connection::create(o);
  ASSERT_TRUE(conn.ok());
  inf::ControlLoopOptions lo;
  lo.rate_hz = 50;
  lo.queue.blend = inf::ChunkBlend::exponential;
  auto loop = inf::ControlLoop::create(model_of(*conn, "chunked"), lo);
  ASSERT_TRUE(loop.ok());

  std::vector<float> joints(7, 0.0f);
  const std::vector<float> target = {0.4f, -0.3f};
  std::uint64_t executed = 0, held_still = 0;
  auto stats = loop->run(
      [&] { return inf::Observation().tensor("joints", {7}, joints).tensor("target", {2}, target); },
      [&](const std::optional<std::vector<double>>& action) {
        if (!action) {
          ++held_still;
          return;
        }
        ASSERT_EQ(action->size(), joints.size());
        for (std::size_t j = 0; j < joints.size(); ++j) joints[j] = static_cast<float>((*action)[j]);
        ++executed;
      },
      100);
  ASSERT_TRUE(stats.ok());
  const auto& q = loop->queue().stats();
  std::printf("[ measured ] 100 steps at 50 Hz: %llu requests, %llu chunks, %llu executed, %llu underruns, "
              "%llu held, %llu overruns, %llu lost\n",
              static_cast<unsigned long long>(stats->requests), static_cast<unsigned long long>(stats->chunks),
              static_cast<unsigned long long>(q.executed), static_cast<unsigned long long>(q.underruns),
              static_cast<unsigned long long>(q.held), static_cast<unsigned long long>(stats->overruns),
              static_cast<unsigned long long>(stats->lost));
  EXPECT_EQ(stats->steps, 100u);
  EXPECT_EQ(executed, q.executed);
  EXPECT_EQ(held_still, q.underruns + q.held);
  EXPECT_TRUE(stats->failed.empty());
  EXPECT_EQ(stats->refused_chunks, 0u);
  EXPECT_GE(stats->chunks, 2u);  // 16-row chunks over 100 steps: the loop must ask again
  EXPECT_GT(q.executed, 0u);
  ASSERT_EQ(loop->arrivals().size(), stats->chunks);
  std::int64_t previous = -1;
  for (const auto& a : loop->arrivals()) {
    EXPECT_GT(a.sent_step, previous);              // one request at a time, steps move forward
    EXPECT_GE(a.arrived_step, a.sent_step);        // a chunk arrives after its observation
    ASSERT_TRUE(a.round_trip_ms);
    EXPECT_GT(*a.round_trip_ms, 0.0);
    previous = a.sent_step;
  }
  // Every step before the first chunk arrived had nothing to execute.
  EXPECT_GE(q.underruns, static_cast<std::uint64_t>(loop->arrivals().front().arrived_step));
}

// A server that answers a robot which is not reading its replies, then goes away: with
// ZMTP PINGs on the robot's socket, libzmq 4.3.x aborted the whole process here (the
// Rust crate's vendored 4.3.4 and pyzmq's 4.3.5 did, every run). Linked against
// Debian's 4.3.4 this scenario did not abort even with PINGs on, so here it checks only
// that the client survives it; SocketOptionsAreThoseOfTheSpec checks that no PING timer
// is armed, which is what removes the abort wherever libzmq comes from.
TEST(Liveness, RobotSurvivesTheServerLeavingWhileRepliesAreUnread) {
  zmq::context_t ctx;
  for (int round = 0; round < 3; ++round) {
    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.bind("tcp://127.0.0.1:*");
    inf::Options o;
    o.endpoint = router.get(zmq::sockopt::last_endpoint);
    o.client_id = "unread-bot";
    o.heartbeat_ivl_ms = 100;
    o.recv_hwm = 5;
    auto c = inf::Connection::create(o);
    ASSERT_TRUE(c.ok());
    auto m = c->model("m");
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(m->observe(inf::Observation()).ok());
    zmq::message_t identity;
    ASSERT_TRUE(router.recv(identity));
    zmq::message_t more;
    while (router.get(zmq::sockopt::rcvmore)) ASSERT_TRUE(router.recv(more));
    const std::string reply(100000, 'x');
    for (int i = 0; i < 200; ++i) {
      zmq::message_t id(identity.data(), identity.size());
      if (!router.send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) break;
      router.send(zmq::str_buffer(""), zmq::send_flags::sndmore);
      router.send(zmq::buffer(reply), zmq::send_flags::none);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    router.close();  // the server goes away while the robot's input is paused
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
  }
}

// A connection libzmq ends for good (here: a reply over the client's max_message_bytes,
// after which libzmq never reconnects) costs the request it carried; the next send opens
// a new socket to the same server (stats.socket_resets).
TEST(Recovery, AReplyOverTheLimitCostsOneRequestAndTheNextSendResetsTheSocket) {
  // `big` answers with 1.2 MB of float32 zeros: over the client's 1 MiB, within the
  // server's own limit. Its module is written here and found through PYTHONPATH (the
  // server's processes inherit it; the tests of this binary run one at a time).
  char dir_template[] = "/tmp/inferential-cpp-recovery-XXXXXX";
  const char* dir = ::mkdtemp(dir_template);
  ASSERT_NE(dir, nullptr);
  const std::string module = std::string(dir) + "/cpp_recovery_models.py";
  {
    std::ofstream out(module);
    out << "import numpy as np\n"
           "from inferential.dispatch.base import Model\n\n"
           "class Big(Model):\n"
           "    def execute(self, batch):\n"
           "        return [{'y': np.zeros(300_000, np.float32)} for _ in batch]\n";
  }
  const char* old_path = std::getenv("PYTHONPATH");
  const std::string saved = old_path ? old_path : "";
  ::setenv("PYTHONPATH", dir, 1);
  ServerProcess server({"--model", "big=cpp_recovery_models:Big", "--model", "noop=inferential.models.testing:NoOp"});
  const bool started = server.start();
  if (old_path) ::setenv("PYTHONPATH", saved.c_str(), 1); else ::unsetenv("PYTHONPATH");
  ASSERT_TRUE(started);

  inf::Options o;
  o.endpoint = server.endpoint();
  o.client_id = "cpp-small";
  o.limits.max_message_bytes = 1024 * 1024;
  auto c = inf::Connection::create(o);
  ASSERT_TRUE(c.ok());
  auto noop = c->model("noop");
  auto big = c->model("big");
  ASSERT_TRUE(noop.ok() && big.ok());
  const float x[1] = {0.0f};
  bool up = false;  // the port accepts before the models are loaded
  for (int i = 0; i < 30 && !up; ++i) up = noop->request(inf::Observation().tensor("x", {1}, x, 1), 2000).ok();
  ASSERT_TRUE(up);
  EXPECT_EQ(c->stats().socket_resets, 0u);

  auto lost = big->request(inf::Observation().tensor("x", {1}, x, 1), 1000);
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.error().kind, inf::ErrorKind::timeout);
  auto after = noop->request(inf::Observation().tensor("x", {1}, x, 1), 5000);
  ASSERT_TRUE(after.ok()) << after.error().to_string();
  EXPECT_EQ(c->stats().socket_resets, 1u);
  // A healthy connection is not reset again.
  ASSERT_TRUE(noop->request(inf::Observation().tensor("x", {1}, x, 1), 5000).ok());
  EXPECT_EQ(c->stats().socket_resets, 1u);
  server.stop();
  ::unlink(module.c_str());
  ::rmdir(dir);
}

// Round trip of this client to our server against the transport floor, in one run:
//   floor   a raw cppzmq DEALER sending the same frames to a raw pyzmq ROUTER echo
//   server  the same raw DEALER and frames to our server (noop model)
//   client  this library's Model::request() to our server (noop model)
// Observation: 224x224x3 uint8 image + 7 float32 (about 150 KB). Prints p50/p99 and the
// client/floor ratio. Usage: bench_roundtrip [ITERATIONS]   (INFERENTIAL_PYTHON = the venv's python)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "../tests/server_process.hpp"
#include "inferential/inferential.hpp"

using Clock = std::chrono::steady_clock;
namespace inf = inferential;

namespace {

struct Row {
  const char* name;
  std::vector<double> us;
  double pct(double p) const {
    std::vector<double> s = us;
    std::sort(s.begin(), s.end());
    return s[std::min(s.size() - 1, static_cast<std::size_t>(p * static_cast<double>(s.size())))];
  }
};

// Runs `once` warmup + n times; the durations of the n timed calls, in microseconds.
std::vector<double> time_calls(int warmup, int n, const std::function<bool()>& once) {
  std::vector<double> out;
  for (int i = 0; i < warmup; ++i)
    if (!once()) return {};
  for (int i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    if (!once()) return {};
    out.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  return out;
}

// A raw DEALER round trip: send `frames` (copied, as any sender must), receive one multipart reply.
bool raw_round_trip(zmq::socket_t& sock, const std::vector<zmq::message_t>& frames) {
  for (std::size_t i = 0; i < frames.size(); ++i) {
    zmq::message_t m(frames[i].data(), frames[i].size());
    if (!sock.send(m, i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none)) return false;
  }
  zmq::message_t part;
  do {
    if (!sock.recv(part)) return false;
  } while (part.more());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 2000;
  const int warmup = std::max(50, n / 10);

  std::vector<std::uint8_t> image(224 * 224 * 3);
  for (std::size_t i = 0; i < image.size(); ++i) image[i] = static_cast<std::uint8_t>(i * 31);
  std::vector<float> joints = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f};
  inf::Observation obs;
  obs.tensor("image", {224, 224, 3}, image).tensor("joints", {7}, joints);

  inf::EnvelopeFields f;
  f.client_id = "bench-raw";
  f.model_id = "noop";
  f.request_id = 1;
  f.latency_budget_ms = 50;
  auto frames = inf::encode_observation(f, obs, {});
  if (!frames) return 1;
  std::size_t bytes = 0;
  for (const auto& m : *frames) bytes += m.size();

  testing_support::ServerProcess server({"--model", "noop=inferential.models.testing:NoOp"});
  // The floor: a pyzmq ROUTER that sends every message straight back.
  const std::string echo_script =
      "import sys, zmq\n"
      "s = zmq.Context().socket(zmq.ROUTER)\n"
      "s.bind(sys.argv[1])\n"
      "while True:\n"
      "    s.send_multipart(s.recv_multipart(copy=False), copy=False)\n";
  if (!server.start()) {
    std::fprintf(stderr, "the server did not start\n");
    return 1;
  }
  const int echo_port = testing_support::free_port();
  auto echo = testing_support::ServerProcess::script(echo_script, echo_port);
  if (!echo.start()) {
    std::fprintf(stderr, "the echo did not start\n");
    return 1;
  }

  zmq::context_t ctx;
  std::vector<Row> rows;
  {
    zmq::socket_t sock(ctx, zmq::socket_type::dealer);
    sock.set(zmq::sockopt::linger, 0);
    sock.connect("tcp://127.0.0.1:" + std::to_string(echo_port));
    rows.push_back({"raw DEALER -> pyzmq ROUTER echo (floor)", time_calls(warmup, n, [&] { return raw_round_trip(sock, *frames); })});
  }
  {
    zmq::socket_t sock(ctx, zmq::socket_type::dealer);
    sock.set(zmq::sockopt::linger, 0);
    sock.connect(server.endpoint());
    rows.push_back({"raw DEALER -> our server (noop)", time_calls(warmup, n, [&] { return raw_round_trip(sock, *frames); })});
  }
  {
    inf::Options o;
    o.endpoint = server.endpoint();
    o.client_id = "bench-client";
    auto conn = inf::Connection::create(o);
    if (!conn) return 1;
    auto model = conn->model("noop");
    if (!model) return 1;
    rows.push_back({"C++ client request() -> our server (noop)",
                    time_calls(warmup, n, [&] { return model->request(obs, 5000).ok(); })});
  }
  for (const auto& r : rows)
    if (r.us.empty()) {
      std::fprintf(stderr, "%s: a round trip failed\n", r.name);
      return 1;
    }

  std::printf("round trip, %zu-byte observation, %d iterations after %d warmup, one run\n", bytes, n, warmup);
  std::printf("%-44s %10s %10s %14s\n", "path", "p50 us", "p99 us", "p50 / floor");
  for (const auto& r : rows)
    std::printf("%-44s %10.0f %10.0f %13.2fx\n", r.name, r.pct(0.5), r.pct(0.99), r.pct(0.5) / rows[0].pct(0.5));
  std::printf("client / raw to the same server: p50 %.2fx, p99 %.2fx\n", rows[2].pct(0.5) / rows[1].pct(0.5),
              rows[2].pct(0.99) / rows[1].pct(0.99));
  return 0;
}

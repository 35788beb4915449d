// A 50 Hz control loop: send the newest observation every tick, act on the newest
// reply when there is one, keep running (with the last action) when there is not.
//
//   control_loop [ENDPOINT] [MODEL] [SECONDS]
//   (defaults tcp://127.0.0.1:5555 noop 3)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "inferential/inferential.hpp"

int main(int argc, char** argv) {
  inferential::Options options;
  options.endpoint = argc > 1 ? argv[1] : "tcp://127.0.0.1:5555";
  options.client_type = "arm";
  const std::string model_id = argc > 2 ? argv[2] : "noop";
  const double seconds = argc > 3 ? std::atof(argv[3]) : 3.0;

  auto connection = inferential::Connection::create(options);
  if (!connection) {
    std::fprintf(stderr, "connect: %s\n", connection.error().to_string().c_str());
    return 1;
  }
  auto policy = connection->model(model_id, {/*latency_budget_ms=*/20.0f, /*priority=*/1});
  if (!policy) {
    std::fprintf(stderr, "model: %s\n", policy.error().to_string().c_str());
    return 1;
  }

  std::vector<std::uint8_t> camera(224 * 224 * 3);
  std::vector<float> joints(7, 0.0f);
  std::vector<float> action(7, 0.0f);
  const auto period = std::chrono::milliseconds(20);
  auto next = std::chrono::steady_clock::now();
  const auto end = next + std::chrono::duration<double>(seconds);
  int ticks = 0, fresh = 0, unavailable = 0;

  while (std::chrono::steady_clock::now() < end) {
    ++ticks;
    camera[ticks % camera.size()] = static_cast<std::uint8_t>(ticks);  // "read the sensors"
    for (std::size_t j = 0; j < joints.size(); ++j) joints[j] += 0.01f * action[j];

    auto sent = policy->observe(inferential::Observation()
                                    .tensor("image", {224, 224, 3}, camera)
                                    .tensor("joints", {7}, joints)
                                    .control_rate_hz(50.0f));
    if (!sent && sent.error().kind == inferential::ErrorKind::server_unavailable) {
      ++unavailable;  // the server is away: keep the loop's rhythm, try again next tick
    } else if (!sent) {
      std::fprintf(stderr, "observe: %s\n", sent.error().to_string().c_str());
      return 1;
    }

    // Wait for a reply only until the next tick is due.
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next + period - std::chrono::steady_clock::now());
    auto reply = policy->get_result(static_cast<int>(std::max<long long>(0, wait.count())));
    if (!reply) {
      std::fprintf(stderr, "reply: %s%s\n", reply.error().to_string().c_str(),
                   reply.error().retryable ? " (retryable)" : "");
    } else if (*reply) {
      if (auto a = (*reply)->tensor("actions")) {
        if (auto v = a->to_vector<float>(); v && v->size() == action.size()) action = *v;
      }
      ++fresh;
    }
    next += period;
    std::this_thread::sleep_until(next);
  }
  auto stats = connection->stats();
  std::printf("ticks %d, fresh actions %d, server unavailable %d; sent %llu received %llu stale %llu\n", ticks,
              fresh, unavailable, static_cast<unsigned long long>(stats.sent),
              static_cast<unsigned long long>(stats.received), static_cast<unsigned long long>(stats.stale_dropped));
  return 0;
}

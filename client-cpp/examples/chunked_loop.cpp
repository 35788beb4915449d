// A robot on a chunked policy: ControlLoop at 50 Hz, executing the server's action chunks
// and asking for the next one while half of the current one is left.
//
//   chunked_loop [ENDPOINT] [MODEL] [SECONDS]
//   (defaults tcp://127.0.0.1:5555 chunked 3; the server runs, e.g.,
//    inferential serve --model chunked=inferential.models.chunked_policy:ChunkedPolicy)
//
// The arm is simulated: its joints follow the commanded positions exactly.
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "inferential/inferential.hpp"

int main(int argc, char** argv) {
  inferential::Options options;
  options.endpoint = argc > 1 ? argv[1] : "tcp://127.0.0.1:5555";
  options.client_type = "arm";
  const std::string model_id = argc > 2 ? argv[2] : "chunked";
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
  inferential::ControlLoopOptions loop_options;
  loop_options.rate_hz = 50;
  loop_options.queue.blend = inferential::ChunkBlend::exponential;  // smooth where chunks overlap
  auto loop = inferential::ControlLoop::create(*policy, loop_options);
  if (!loop) {
    std::fprintf(stderr, "loop: %s\n", loop.error().to_string().c_str());
    return 1;
  }

  std::vector<float> joints(7, 0.0f);
  const std::vector<float> target = {0.4f, -0.3f};
  auto stats = loop->run(
      [&] { return inferential::Observation().tensor("joints", {7}, joints).tensor("target", {2}, target); },
      [&](const std::optional<std::vector<double>>& action) {
        if (!action || action->size() != joints.size()) return;  // hold still
        for (std::size_t j = 0; j < joints.size(); ++j) joints[j] = static_cast<float>((*action)[j]);
      },
      /*steps=*/std::nullopt, seconds);
  if (!stats) {
    std::fprintf(stderr, "run: %s\n", stats.error().to_string().c_str());
    return 1;
  }
  const auto& q = loop->queue().stats();
  std::printf("steps %llu, requests %llu, chunks %llu, executed %llu, underruns %llu, held %llu, lost %llu, "
              "overruns %llu, send failures %llu\n",
              static_cast<unsigned long long>(stats->steps), static_cast<unsigned long long>(stats->requests),
              static_cast<unsigned long long>(stats->chunks), static_cast<unsigned long long>(q.executed),
              static_cast<unsigned long long>(q.underruns), static_cast<unsigned long long>(q.held),
              static_cast<unsigned long long>(stats->lost), static_cast<unsigned long long>(stats->overruns),
              static_cast<unsigned long long>(stats->send_failed));
  if (!loop->arrivals().empty()) {
    const auto& last = loop->arrivals().back();
    std::printf("last chunk: sent at step %lld, arrived at step %lld, delay predicted %.2f / measured %.2f steps\n",
                static_cast<long long>(last.sent_step), static_cast<long long>(last.arrived_step),
                static_cast<double>(last.predicted_delay_steps), static_cast<double>(last.actual_delay_steps));
  }
  if (stats->send_failed && loop->last_error())
    std::printf("last error: %s\n", loop->last_error()->to_string().c_str());
  return stats->chunks > 0 ? 0 : 2;
}

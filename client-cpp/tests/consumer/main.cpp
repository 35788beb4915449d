// Uses the installed headers and library: encodes an observation and checks a
// connection's options, with no server needed.
#include <cstdio>

#include <inferential/inferential.hpp>

int main() {
  const float joints[7] = {0, 1, 2, 3, 4, 5, 6};
  inferential::EnvelopeFields fields;
  fields.client_id = "consumer";
  fields.model_id = "policy";
  fields.request_id = 1;
  auto frames = inferential::encode_observation(fields, inferential::Observation().tensor("joints", {7}, joints, 7), {});
  if (!frames || frames->size() != 3) return 1;
  inferential::Options bad;
  bad.reconnect_ivl_ms = 0;
  auto refused = inferential::Connection::create(bad);
  if (refused || refused.error().kind != inferential::ErrorKind::invalid_argument) return 2;
  // The chunk queue from the installed chunks.hpp (compiled into the installed library).
  inferential::ChunkQueueOptions chunk_options;
  chunk_options.blend = inferential::ChunkBlend::average;
  auto queue = inferential::ActionChunkQueue::create(chunk_options);
  if (!queue) return 3;
  auto rows = queue->add(inferential::Span<float>(joints, 6), 2, 0);  // 3 rows of 2
  if (!rows || *rows != 3 || !queue->pop() || queue->actions_remaining() != 2) return 4;
  std::printf("consumer: %zu frames, refused: %s, chunk rows: %zu\n", frames->size(), refused.error().message.c_str(),
              *rows);
  return 0;
}

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
  std::printf("consumer: %zu frames, refused: %s\n", frames->size(), refused.error().message.c_str());
  return 0;
}

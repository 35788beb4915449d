// libFuzzer target: arbitrary bytes as the frames a DEALER receives, through the
// reply decoder, an action-chunk queue (add_reply, whatever the reply's chunk fields and
// `actions` tensor say) and the matcher. Any crash, sanitizer report or exception escaping
// is a finding.
//
// Input layout: byte 0 bit 0 set = a non-empty delimiter; then frames as
// [u16 little-endian length][bytes] until the input ends (a short tail is one frame).
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "inferential/chunks.hpp"
#include "inferential/matching.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::vector<zmq::message_t> frames;
  frames.emplace_back((data[0] & 1) ? "x" : "", (data[0] & 1) ? 1 : 0);
  std::size_t i = 1;
  while (i < size) {
    std::size_t len = size - i;
    if (len >= 2) {
      const std::size_t want = data[i] | (static_cast<std::size_t>(data[i + 1]) << 8);
      i += 2;
      len = std::min(want, size - i);
    }
    frames.emplace_back(data + i, len);
    i += len;
  }
  inferential::Limits limits;
  limits.max_message_bytes = 1 << 20;
  auto decoded = inferential::decode_reply(std::move(frames), limits);
  if (decoded.reply) {
    // Touch every byte of every view, so a view outside its frame is reported.
    unsigned sum = 0;
    for (const auto& t : decoded.reply->tensors) {
      for (std::size_t k = 0; k < t.size_bytes(); ++k) sum += static_cast<unsigned>(t.data()[k]);
      if (t.dtype() == inferential::DType::float64) {
        if (auto v = t.values<double>()) {
          for (double x : *v) sum += static_cast<unsigned>(x == x);
        }
      }
    }
    if (sum == 0xFFFFFFFFu) std::abort();  // keeps the loop from being optimized out
    // A chunk from the network: refused or queued, never a crash. Bounded so a huge
    // first_action_step or row count cannot make the fuzzer itself run out of memory.
    const inferential::ReplyTensor* actions = decoded.reply->tensor("actions");
    if (actions && actions->element_count() <= 4096) {
      auto queue = inferential::ActionChunkQueue::create();
      if (queue) {
        (void)queue->add_reply(*decoded.reply, 0);
        (void)queue->peek(8);
        (void)queue->pop();
      }
    }
  }
  // Route it as if a request with its id were waiting.
  inferential::Matcher m;
  const std::string model = decoded.model_id;
  for (std::uint64_t k = 0; k < 3; ++k) m.track(m.next_request_id(), model, k == 1, 0);
  m.on_reply(std::move(decoded), 1);
  (void)m.take_latest(model);
  (void)m.take_awaited(2);
  return 0;
}

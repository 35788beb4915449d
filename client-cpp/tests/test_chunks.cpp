// ActionChunkQueue (docs/protocol.md §14): alignment to control steps, blends, expiry,
// underruns and holds, on a fake clock; then a seeded randomized check against a model.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "inferential/chunks.hpp"

namespace inf = inferential;

namespace {

// A clock the test moves by hand; shared so the queue can be moved around.
struct FakeClock {
  std::shared_ptr<std::int64_t> now = std::make_shared<std::int64_t>(1'000'000'000);
  inf::ChunkClock fn() const {
    auto p = now;
    return [p] { return *p; };
  }
};

inf::ActionChunkQueue make(inf::ChunkQueueOptions options = {}) {
  auto q = inf::ActionChunkQueue::create(std::move(options));
  EXPECT_TRUE(q.ok()) << (q.ok() ? "" : q.error().to_string());
  return std::move(q).value();
}

// `rows` one-value rows: first, first + 1, ...
std::vector<std::vector<double>> ramp(double first, int rows) {
  std::vector<std::vector<double>> out;
  for (int i = 0; i < rows; ++i) out.push_back({first + i});
  return out;
}

std::vector<std::vector<double>> filled(int rows, std::size_t width, double value) {
  return std::vector<std::vector<double>>(static_cast<std::size_t>(rows), std::vector<double>(width, value));
}

std::size_t added(inf::Result<std::size_t> r) {
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().to_string());
  return r.ok() ? *r : 0;
}

TEST(ChunkQueue, RowsAlignToStepsAndPastRowsAreLate) {
  auto q = make();
  EXPECT_FALSE(q.pop().has_value());  // step 0: nothing yet
  EXPECT_EQ(added(q.add(ramp(10, 4), 0)), 3u);  // row 0 was for step 0, already spent
  EXPECT_EQ(q.stats().late, 1u);
  for (double want : {11.0, 12.0, 13.0}) {
    auto a = q.pop();
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(*a, std::vector<double>{want});
  }
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_EQ(q.stats().executed, 3u);
  EXPECT_EQ(q.stats().underruns, 2u);
  EXPECT_EQ(q.next_step(), 5);
}

struct BlendCase {
  const char* name;
  inf::ChunkQueueOptions options;
  std::vector<double> first_column;  // of the actions for steps 0..3
};

TEST(ChunkQueue, OverlappingChunksBlend) {
  inf::ChunkQueueOptions custom;
  custom.blend = inf::ChunkBlend::custom;
  custom.blend_function = [](const std::vector<double>& old_action, const std::vector<double>& new_row) {
    std::vector<double> out(old_action.size());
    for (std::size_t j = 0; j < out.size(); ++j) out[j] = std::max(old_action[j], new_row[j]) + 1.0;
    return out;
  };
  inf::ChunkQueueOptions latest, average, exponential;
  average.blend = inf::ChunkBlend::average;
  exponential.blend = inf::ChunkBlend::exponential;  // new_weight 0.7 by default
  const BlendCase cases[] = {
      {"latest", latest, {0, 10, 10, 10}},
      {"average", average, {0, 5, 5, 10}},
      {"exponential", exponential, {0, 7, 7, 10}},
      {"custom max + 1", custom, {0, 11, 11, 10}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto q = make(c.options);
    EXPECT_EQ(added(q.add(filled(3, 2, 0.0), 0)), 3u);   // steps 0..2
    EXPECT_EQ(added(q.add(filled(3, 2, 10.0), 1)), 3u);  // steps 1..3 overlap 1..2
    EXPECT_EQ(q.stats().merged, 2u);
    for (double want : c.first_column) {
      auto a = q.pop();
      ASSERT_TRUE(a.has_value());
      ASSERT_EQ(a->size(), 2u);
      EXPECT_NEAR((*a)[0], want, 1e-12);
      EXPECT_NEAR((*a)[1], want, 1e-12);
    }
  }
}

TEST(ChunkQueue, ExponentialUsesItsWeight) {
  inf::ChunkQueueOptions o;
  o.blend = inf::ChunkBlend::exponential;
  o.new_weight = 0.25;
  auto q = make(o);
  (void)q.add(filled(1, 1, 4.0), 0);
  (void)q.add(filled(1, 1, 8.0), 0);
  EXPECT_NEAR(q.pop()->at(0), 0.25 * 8.0 + 0.75 * 4.0, 1e-12);
}

TEST(ChunkQueue, AverageCountsEveryRowProposedForAStep) {
  inf::ChunkQueueOptions o;
  o.blend = inf::ChunkBlend::average;
  auto q = make(o);
  for (double v : {0.0, 3.0, 6.0}) EXPECT_EQ(added(q.add(filled(1, 1, v), 0)), 1u);
  auto a = q.pop();
  ASSERT_TRUE(a.has_value());
  EXPECT_NEAR((*a)[0], 3.0, 1e-12);
  EXPECT_EQ(q.stats().merged, 2u);
}

TEST(ChunkQueue, ExpiredActionsAreHeldNotExecuted) {
  FakeClock clock;
  inf::ChunkQueueOptions o;
  o.clock = clock.fn();
  auto q = make(o);
  EXPECT_EQ(added(q.add(ramp(0, 4), 0, *clock.now + 10)), 4u);
  EXPECT_EQ(q.actions_remaining(), 4u);
  EXPECT_TRUE(q.pop().has_value());
  *clock.now += 10;  // exactly valid_until_ns: still valid
  EXPECT_EQ(q.actions_remaining(), 3u);
  *clock.now += 1;
  EXPECT_EQ(q.actions_remaining(), 0u);
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_EQ(q.stats().executed, 1u);
  EXPECT_EQ(q.stats().held, 2u);
  EXPECT_EQ(q.stats().underruns, 0u);
}

TEST(ChunkQueue, ANewerChunkVouchesForTheActionsItMergesInto) {
  FakeClock clock;
  inf::ChunkQueueOptions o;
  o.blend = inf::ChunkBlend::average;
  o.clock = clock.fn();
  auto q = make(o);
  (void)q.add(ramp(0, 3), 0, *clock.now + 5);
  (void)q.add(ramp(0, 3), 1, *clock.now + 100);
  *clock.now += 50;
  EXPECT_FALSE(q.pop().has_value());  // step 0 only had the expired chunk
  auto a1 = q.pop(), a2 = q.pop();
  ASSERT_TRUE(a1.has_value());
  ASSERT_TRUE(a2.has_value());
  EXPECT_NEAR((*a1)[0], 0.5, 1e-12);  // mean of 1 (first chunk) and 0 (second chunk)
  EXPECT_NEAR((*a2)[0], 1.5, 1e-12);
  EXPECT_EQ(q.stats().held, 1u);
  EXPECT_EQ(q.stats().executed, 2u);
}

TEST(ChunkQueue, AChunkWithoutValidityMakesMergedActionsNeverExpire) {
  FakeClock clock;
  inf::ChunkQueueOptions o;
  o.clock = clock.fn();
  auto q = make(o);
  (void)q.add(ramp(0, 2), 0, *clock.now + 1);
  (void)q.add(ramp(5, 1), 1, std::nullopt);
  *clock.now += 1000;
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_EQ(q.pop(), std::optional<std::vector<double>>(std::vector<double>{5.0}));
}

TEST(ChunkQueue, ActionsRemainingCountsConsecutiveStepsOnly) {
  auto q = make();
  (void)q.add(ramp(0, 2), 0);
  (void)q.add(ramp(5, 2), 5);
  EXPECT_EQ(q.actions_remaining(), 2u);
  EXPECT_EQ(q.size(), 4u);
  (void)q.pop();
  (void)q.pop();
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_EQ(q.actions_remaining(), 0u);  // step 3 is empty, 5 and 6 are not consecutive
  EXPECT_EQ(q.stats().underruns, 1u);
}

TEST(ChunkQueue, PeekShowsTheValidConsecutivePrefixWithoutExecutingIt) {
  FakeClock clock;
  inf::ChunkQueueOptions o;
  o.clock = clock.fn();
  auto q = make(o);
  auto none = q.peek();
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  (void)q.add(ramp(0, 3), 0, *clock.now + 10);
  (void)q.add(ramp(7, 1), 4);  // not consecutive: step 3 is empty
  auto all = q.peek();
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, (std::vector<std::vector<double>>{{0}, {1}, {2}}));
  auto two = q.peek(2);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(*two, (std::vector<std::vector<double>>{{0}, {1}}));
  EXPECT_EQ(q.size(), 4u);  // nothing was executed or counted
  EXPECT_EQ(q.stats().executed, 0u);
  *clock.now += 11;
  auto expired = q.peek();
  ASSERT_TRUE(expired.ok());
  EXPECT_TRUE(expired->empty());
}

// A reply as the decoder makes it: an `actions` tensor of float32 rows and the chunk fields.
inf::Reply chunk_reply(const std::vector<std::vector<float>>& rows, std::optional<std::uint64_t> first_step,
                       std::optional<std::uint64_t> valid_until_ns = std::nullopt) {
  auto flat = std::make_shared<std::vector<float>>();
  for (const auto& row : rows) flat->insert(flat->end(), row.begin(), row.end());
  inf::Reply r;
  const std::int64_t width = rows.empty() ? 0 : static_cast<std::int64_t>(rows.front().size());
  r.tensors.emplace_back("actions", inf::DType::float32, std::vector<std::int64_t>{static_cast<std::int64_t>(rows.size()), width},
                         reinterpret_cast<const std::byte*>(flat->data()), flat->size() * sizeof(float), true, flat);
  r.first_action_step = first_step;
  r.valid_until_ns = valid_until_ns;
  return r;
}

TEST(ChunkQueue, AddReplyStartsAtFirstActionStepAndExpiresAtValidUntil) {
  FakeClock clock;
  inf::ChunkQueueOptions o;
  o.clock = clock.fn();
  auto q = make(o);
  const std::int64_t until = *clock.now + 50;
  auto added = q.add_reply(chunk_reply({{1, 10}, {2, 20}, {3, 30}}, 1, static_cast<std::uint64_t>(until)));
  ASSERT_TRUE(added.ok()) << added.error().to_string();
  EXPECT_EQ(*added, 3u);
  EXPECT_FALSE(q.pop());  // step 0: the chunk starts at step 1
  EXPECT_EQ(q.stats().underruns, 1u);
  EXPECT_EQ(q.pop(), (std::vector<double>{1, 10}));
  *clock.now = until + 1;  // past valid_until_ns: the rest is held, not executed
  EXPECT_EQ(q.actions_remaining(), 0u);
  EXPECT_FALSE(q.pop());
  EXPECT_EQ(q.stats().held, 1u);
}

TEST(ChunkQueue, AddReplyWithoutFirstActionStepNeedsAStartStep) {
  auto q = make();
  const auto reply = chunk_reply({{1}, {2}}, std::nullopt);  // no validity: never expires
  auto refused = q.add_reply(reply);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, inf::ErrorKind::invalid_argument);
  EXPECT_TRUE(q.empty());
  auto added = q.add_result(reply, 0);
  ASSERT_TRUE(added.ok());
  EXPECT_EQ(*added, 2u);
  // The reply's own step wins over the caller's.
  auto echoed = q.add_reply(chunk_reply({{5}}, 3), 0);
  ASSERT_TRUE(echoed.ok());
  auto shown = q.peek();
  ASSERT_TRUE(shown.ok());
  EXPECT_EQ(*shown, (std::vector<std::vector<double>>{{1}, {2}}));  // step 2 empty, 3 not consecutive
  EXPECT_EQ(q.size(), 3u);
}

TEST(ChunkQueue, AddReplyRefusesWhatIsNotAChunk) {
  auto q = make();
  inf::Reply none;
  none.first_action_step = 0;
  EXPECT_FALSE(q.add_reply(none).ok());  // no actions tensor
  auto scalar = std::make_shared<float>(1.0f);
  inf::Reply zero_d = none;
  zero_d.tensors.emplace_back("actions", inf::DType::float32, std::vector<std::int64_t>{},
                              reinterpret_cast<const std::byte*>(scalar.get()), sizeof(float), true, scalar);
  EXPECT_FALSE(q.add_reply(zero_d).ok());
  auto past = chunk_reply({{1}}, static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) + 1);
  EXPECT_FALSE(q.add_reply(past).ok());
  EXPECT_TRUE(q.empty());
  // A 1-D [H] tensor is H one-value rows; an integer dtype becomes double.
  auto ints = std::make_shared<std::vector<std::int32_t>>(std::vector<std::int32_t>{4, 5});
  inf::Reply one_d = none;
  one_d.tensors.emplace_back("actions", inf::DType::int32, std::vector<std::int64_t>{2},
                             reinterpret_cast<const std::byte*>(ints->data()), 2 * sizeof(std::int32_t), true, ints);
  auto added = q.add_reply(one_d);
  ASSERT_TRUE(added.ok());
  EXPECT_EQ(q.pop(), (std::vector<double>{4}));
  EXPECT_EQ(q.pop(), (std::vector<double>{5}));
}

TEST(ChunkQueue, StartStepAndClear) {
  inf::ChunkQueueOptions o;
  o.start_step = 100;
  auto q = make(o);
  EXPECT_EQ(q.next_step(), 100);
  EXPECT_EQ(added(q.add(ramp(0, 3), 99)), 2u);
  EXPECT_EQ(q.actions_remaining(), 2u);
  q.clear();
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_EQ(q.next_step(), 101);
  EXPECT_EQ(q.stats().late, 1u);
  EXPECT_EQ(q.stats().underruns, 1u);
}

TEST(ChunkQueue, FlatSpansOfAnyElementType) {
  auto q = make();
  const float h_by_j[] = {0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f};  // [3, 2] in C order
  EXPECT_EQ(added(q.add(inf::Span<float>(h_by_j, 6), 2, 0)), 3u);
  const std::int32_t ints[] = {7, 8};
  EXPECT_EQ(added(q.add(inf::Span<std::int32_t>(ints, 2), 2, 3)), 1u);
  const inf::BFloat16 b[] = {inf::BFloat16::from_float(1.0f), inf::BFloat16::from_float(-2.0f)};
  EXPECT_EQ(added(q.add(inf::Span<inf::BFloat16>(b, 2), 2, 4)), 1u);
  const std::vector<std::vector<double>> want = {{0.5, 1.5}, {2.5, 3.5}, {4.5, 5.5}, {7, 8}, {1, -2}};
  for (const auto& w : want) EXPECT_EQ(q.pop(), std::optional<std::vector<double>>(w));
  EXPECT_EQ(added(q.add(inf::Span<double>(nullptr, 0), 3, 9)), 0u);  // an empty chunk
}

TEST(ChunkQueue, BadConstructionIsRefused) {
  auto expect_refused = [](inf::ChunkQueueOptions o, const char* mentions) {
    auto q = inf::ActionChunkQueue::create(std::move(o));
    ASSERT_FALSE(q.ok());
    EXPECT_EQ(q.error().kind, inf::ErrorKind::invalid_argument);
    EXPECT_NE(q.error().message.find(mentions), std::string::npos) << q.error().message;
  };
  for (double w : {0.0, -0.5, 1.0000001, std::nan(""), std::numeric_limits<double>::infinity()}) {
    inf::ChunkQueueOptions o;
    o.blend = inf::ChunkBlend::exponential;
    o.new_weight = w;
    expect_refused(o, "new_weight");
  }
  inf::ChunkQueueOptions custom_without;
  custom_without.blend = inf::ChunkBlend::custom;
  expect_refused(custom_without, "blend_function");
  inf::ChunkQueueOptions function_without_custom;
  function_without_custom.blend_function = [](const std::vector<double>& a, const std::vector<double>&) { return a; };
  expect_refused(function_without_custom, "blend_function");
  inf::ChunkQueueOptions bad_enum;
  bad_enum.blend = static_cast<inf::ChunkBlend>(42);
  expect_refused(bad_enum, "blend");

  inf::ChunkQueueOptions edge;
  edge.blend = inf::ChunkBlend::exponential;
  edge.new_weight = 1.0;  // the closed end of (0, 1]
  EXPECT_TRUE(inf::ActionChunkQueue::create(edge).ok());
  EXPECT_EQ(inf::chunk_blend_from_name("average"), inf::ChunkBlend::average);
  EXPECT_FALSE(inf::chunk_blend_from_name("median").has_value());
  EXPECT_STREQ(inf::chunk_blend_name(inf::ChunkBlend::exponential), "exponential");
}

TEST(ChunkQueue, BadChunksAreRefusedAndLeaveTheQueueUnchanged) {
  inf::ChunkQueueOptions o;
  o.blend = inf::ChunkBlend::average;
  auto q = make(o);
  (void)q.add(filled(2, 2, 1.0), 1);  // steps 1, 2 with two values
  (void)q.pop();                        // step 0: an underrun
  const auto before = q.stats();

  auto expect_refused = [&](inf::Result<std::size_t> r, const char* mentions) {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, inf::ErrorKind::invalid_argument);
    EXPECT_NE(r.error().message.find(mentions), std::string::npos) << r.error().message;
  };
  const double five[] = {1, 2, 3, 4, 5};
  expect_refused(q.add(inf::Span<double>(five, 5), 2, 1), "do not split");
  expect_refused(q.add(inf::Span<double>(five, 5), 0, 1), "row_width");
  expect_refused(q.add(std::vector<std::vector<double>>{{1, 2}, {3}}, 1), "row 1");
  expect_refused(q.add(std::vector<std::vector<double>>{{}, {}}, 1), "0 values");
  // Row 0 is late, rows 2 and 3 would be queued, but step 1 holds two values, not three.
  expect_refused(q.add(filled(4, 3, 9.0), 0), "cannot merge");
  expect_refused(q.add(filled(2, 2, 9.0), std::numeric_limits<std::int64_t>::max() - 1), "last step");

  EXPECT_EQ(q.stats().late, before.late);
  EXPECT_EQ(q.stats().merged, before.merged);
  EXPECT_EQ(q.size(), 2u);
  EXPECT_EQ(q.pop(), std::optional<std::vector<double>>(std::vector<double>{1.0, 1.0}));
  EXPECT_EQ(q.pop(), std::optional<std::vector<double>>(std::vector<double>{1.0, 1.0}));
  EXPECT_FALSE(q.pop().has_value());  // step 3 was never queued
}

TEST(ChunkQueue, AFaultyBlendFunctionIsRefusedAndLeavesTheQueueUnchanged) {
  inf::ChunkQueueOptions o;
  o.blend = inf::ChunkBlend::custom;
  int calls = 0;
  o.blend_function = [&calls](const std::vector<double>& old_action, const std::vector<double>&) {
    if (++calls == 1) throw std::runtime_error("boom");
    return std::vector<double>(old_action.size() + 1);  // the wrong width
  };
  auto q = make(o);
  (void)q.add(filled(1, 1, 1.0), 0);
  auto threw = q.add(filled(2, 1, 2.0), 0);
  ASSERT_FALSE(threw.ok());
  EXPECT_NE(threw.error().message.find("boom"), std::string::npos);
  auto wrong = q.add(filled(2, 1, 2.0), 0);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message.find("returned 2 values"), std::string::npos);
  EXPECT_EQ(q.size(), 1u);  // step 1 of the refused chunks was not queued
  EXPECT_EQ(q.stats().merged, 0u);
  EXPECT_EQ(q.pop(), std::optional<std::vector<double>>(std::vector<double>{1.0}));
}

TEST(ChunkQueue, AThrowingClockHoldsActionsThatCanExpire) {
  inf::ChunkQueueOptions o;
  o.clock = []() -> std::int64_t { throw std::runtime_error("no time"); };
  auto q = make(o);
  (void)q.add(ramp(0, 1), 0, std::numeric_limits<std::int64_t>::max() - 1);
  (void)q.add(ramp(1, 1), 1);  // never expires: served whatever the clock says
  EXPECT_EQ(q.actions_remaining(), 0u);
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_EQ(q.stats().held, 1u);
  EXPECT_EQ(q.pop(), std::optional<std::vector<double>>(std::vector<double>{1.0}));
}

TEST(ChunkQueue, TheLastStepIsNeverServedTwice) {
  inf::ChunkQueueOptions o;
  o.start_step = std::numeric_limits<std::int64_t>::max() - 1;
  auto q = make(o);
  EXPECT_EQ(added(q.add(ramp(0, 1), q.next_step())), 1u);
  EXPECT_TRUE(q.pop().has_value());
  EXPECT_EQ(q.next_step(), std::numeric_limits<std::int64_t>::max());
  EXPECT_FALSE(q.add(ramp(0, 1), q.next_step()).ok());  // past the last step
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_EQ(q.stats().executed, 1u);
  EXPECT_EQ(q.stats().underruns, 2u);
}

TEST(ChunkQueue, TheSystemClockIsTheDefault) {
  auto q = make();
  const auto now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  (void)q.add(ramp(0, 1), 0, now_ns + 3'600'000'000'000);  // an hour from now
  (void)q.add(ramp(1, 1), 1, now_ns - 1'000'000'000);       // a second ago
  EXPECT_EQ(q.actions_remaining(), 1u);
  EXPECT_TRUE(q.pop().has_value());
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_EQ(q.stats().held, 1u);
}

// A seeded random sequence of add / pop / tick operations against a model that only
// knows, for each step, whether an action is queued and until when it is valid, plus
// the smallest and largest value proposed for it (every built-in blend and the custom
// one used here stay within them; `latest` must give the last one exactly).
TEST(ChunkQueue, RandomizedAgainstAModel) {
  struct Expect {
    std::optional<std::int64_t> valid_until;
    double lo, hi, last;
  };
  const inf::ChunkBlend blends[] = {inf::ChunkBlend::latest, inf::ChunkBlend::average, inf::ChunkBlend::exponential,
                                    inf::ChunkBlend::custom};
  std::mt19937_64 rng(20261130);
  auto uniform = [&rng](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  std::uint64_t pops = 0, adds = 0;
  for (int sequence = 0; sequence < 2000; ++sequence) {
    const inf::ChunkBlend blend = blends[sequence % 4];
    SCOPED_TRACE("sequence " + std::to_string(sequence) + ", blend " + inf::chunk_blend_name(blend));
    FakeClock clock;
    *clock.now = 0;
    inf::ChunkQueueOptions o;
    o.blend = blend;
    o.new_weight = 0.05 + 0.95 * std::uniform_real_distribution<double>(0, 1)(rng);
    o.start_step = uniform(-5, 5);
    o.clock = clock.fn();
    if (blend == inf::ChunkBlend::custom)
      o.blend_function = [](const std::vector<double>& a, const std::vector<double>& b) {
        std::vector<double> out(a.size());
        for (std::size_t j = 0; j < a.size(); ++j) out[j] = std::min(a[j], b[j]);
        return out;
      };
    auto q = make(o);
    const auto width = static_cast<std::size_t>(uniform(1, 3));

    std::map<std::int64_t, Expect> model;
    std::int64_t model_next = o.start_step;
    std::uint64_t underruns = 0, holds = 0, late = 0, merged = 0;
    std::vector<std::int64_t> executed_steps;
    const int ops = static_cast<int>(uniform(0, 80));
    for (int op = 0; op < ops; ++op) {
      const auto which = uniform(0, 9);
      if (which < 4) {  // add
        const std::int64_t start = q.next_step() + uniform(-3, 12);
        const auto rows = static_cast<std::size_t>(uniform(1, 6));
        std::optional<std::int64_t> until;
        if (uniform(0, 3) != 0) until = *clock.now + uniform(0, 40);
        std::vector<double> values(rows * width);
        for (auto& v : values) v = static_cast<double>(uniform(-1000, 1000));
        auto r = q.add(inf::Span<double>(values.data(), values.size()), width, start, until);
        ASSERT_TRUE(r.ok()) << r.error().to_string();
        std::size_t want_queued = 0;
        for (std::size_t i = 0; i < rows; ++i) {
          const std::int64_t step = start + static_cast<std::int64_t>(i);
          if (step < model_next) {
            ++late;
            continue;
          }
          ++want_queued;
          const double v = values[i * width];  // the model follows column 0
          auto found = model.find(step);
          if (found == model.end()) {
            model[step] = Expect{until, v, v, v};
          } else {
            ++merged;
            found->second = Expect{until, std::min(found->second.lo, v), std::max(found->second.hi, v), v};
          }
        }
        EXPECT_EQ(*r, want_queued);
        ++adds;
      } else if (which < 8) {  // pop
        const std::int64_t step = q.next_step();
        ASSERT_EQ(step, model_next);
        auto action = q.pop();
        ++model_next;
        ++pops;
        auto found = model.find(step);
        if (found == model.end()) {
          EXPECT_FALSE(action.has_value());
          ++underruns;
        } else if (found->second.valid_until && *clock.now > *found->second.valid_until) {
          EXPECT_FALSE(action.has_value()) << "an expired action was executed";
          ++holds;
        } else {
          ASSERT_TRUE(action.has_value());
          ASSERT_EQ(action->size(), width);
          const double got = (*action)[0];
          EXPECT_GE(got, found->second.lo - 1e-9);
          EXPECT_LE(got, found->second.hi + 1e-9);
          if (blend == inf::ChunkBlend::latest) EXPECT_EQ(got, found->second.last);
          if (blend == inf::ChunkBlend::custom) EXPECT_EQ(got, found->second.lo);
          executed_steps.push_back(step);
        }
        if (found != model.end()) model.erase(found);
      } else {  // tick
        *clock.now += uniform(1, 10);
      }
      // What a robot would report after every operation.
      std::uint32_t remaining = 0;
      for (auto it = model.find(model_next);
           it != model.end() && it->first == model_next + remaining &&
           !(it->second.valid_until && *clock.now > *it->second.valid_until);
           ++it)
        ++remaining;
      ASSERT_EQ(q.actions_remaining(), remaining);
      auto prefix = q.peek();
      ASSERT_TRUE(prefix.ok());
      ASSERT_EQ(prefix->size(), remaining);
      ASSERT_EQ(q.size(), model.size());
    }
    EXPECT_TRUE(std::adjacent_find(executed_steps.begin(), executed_steps.end(),
                                   [](std::int64_t a, std::int64_t b) { return a >= b; }) == executed_steps.end())
        << "a step was executed twice or out of order";
    EXPECT_EQ(q.stats().underruns, underruns);
    EXPECT_EQ(q.stats().held, holds);
    EXPECT_EQ(q.stats().executed, executed_steps.size());
    EXPECT_EQ(q.stats().late, late);
    EXPECT_EQ(q.stats().merged, merged);
    if (HasFailure()) return;  // one failing sequence is enough to read
  }
  // The sequences must have exercised something (guards a broken generator).
  EXPECT_GT(pops, 10000u);
  EXPECT_GT(adds, 10000u);
}

}  // namespace

// The matcher as a pure state machine: sends, replies and a clock given by the test.
#include <gtest/gtest.h>

#include "inferential/matching.hpp"

namespace inf = inferential;

namespace {

inf::Decoded reply(std::uint64_t rid, const std::string& model, int status = inf::status::ok,
                   std::uint32_t pv = 2) {
  inf::Decoded d;
  d.header_parsed = true;
  d.request_id = rid;
  d.model_id = model;
  d.protocol_version = pv;
  d.status = status;
  inf::Reply r;
  r.request_id = rid;
  r.model_id = model;
  r.status = status == inf::status::unspecified ? inf::status::ok : status;
  r.protocol_version = pv;
  d.reply = r;
  return d;
}

inf::Decoded broken(std::uint64_t rid, const std::string& model) {
  inf::Decoded d = reply(rid, model);
  d.reply.reset();
  d.malformed = "tensors[0]: bad";
  return d;
}

struct Fixture : ::testing::Test {
  inf::Matcher m;
  std::int64_t clock = 1'000'000;
  std::uint64_t send(const std::string& model, bool awaited = false) {
    auto rid = m.next_request_id();
    m.track(rid, model, awaited, clock);
    m.sent();
    return rid;
  }
  void receive(inf::Decoded d) { m.on_reply(std::move(d), clock); }
};

}  // namespace

TEST_F(Fixture, IdsStartAtOneAndIncrease) {
  EXPECT_EQ(send("m"), 1u);
  EXPECT_EQ(send("m"), 2u);
  auto failed = m.next_request_id();
  m.track(failed, "m", false, clock);
  m.send_failed(failed);
  EXPECT_EQ(send("m"), 4u);  // a failed id is not reused
  EXPECT_EQ(m.stats().send_failed, 1u);
  EXPECT_EQ(m.stats().sent, 3u);
}

TEST_F(Fixture, ReplyIsDeliveredPerModelWithItsRoundTrip) {
  auto a = send("a");
  auto b = send("b");
  clock += 2'500'000;
  receive(reply(b, "b"));
  receive(reply(a, "a"));
  auto ra = m.take_latest("a");
  ASSERT_TRUE(ra);
  EXPECT_EQ(ra->request_id, a);
  EXPECT_DOUBLE_EQ(*ra->round_trip_ms, 2.5);
  EXPECT_EQ(m.take_latest("b")->request_id, b);
  EXPECT_FALSE(m.take_latest("a"));
  EXPECT_EQ(m.stats().by_status.at(inf::status::ok), 2u);
  EXPECT_EQ(m.stats().received, 2u);
  EXPECT_EQ(m.outstanding(), 0u);
}

TEST_F(Fixture, NewerUnreadReplyReplacesAnOlderOneCountedStale) {
  auto r1 = send("m");
  auto r2 = send("m");
  receive(reply(r1, "m"));
  receive(reply(r2, "m"));
  EXPECT_EQ(m.take_latest("m")->request_id, r2);
  EXPECT_EQ(m.stats().stale_dropped, 1u);
}

TEST_F(Fixture, ReplyOlderThanOneDeliveredIsStale) {
  auto r1 = send("m");
  auto r2 = send("m");
  receive(reply(r2, "m"));
  EXPECT_EQ(m.take_latest("m")->request_id, r2);
  receive(reply(r1, "m"));
  EXPECT_FALSE(m.take_latest("m"));
  EXPECT_EQ(m.stats().stale_dropped, 1u);
}

TEST_F(Fixture, UnknownDuplicateAndWrongModelRepliesAreCountedUnknown) {
  auto r1 = send("m");
  receive(reply(99, "m"));   // never sent
  receive(reply(r1, "x"));   // wrong model
  receive(reply(r1, "m"));
  receive(reply(r1, "m"));   // duplicate
  EXPECT_EQ(m.stats().unknown_dropped, 3u);
  EXPECT_TRUE(m.take_latest("m"));
}

TEST_F(Fixture, MalformedRepliesAreCountedAndFailTheirWaiter) {
  inf::Decoded garbage;
  garbage.malformed = "envelope: not a valid ModelResponse";
  receive(garbage);
  auto plain = send("m");
  auto awaited = send("m", true);
  receive(broken(plain, "m"));
  receive(broken(awaited, "m"));
  EXPECT_EQ(m.stats().malformed_dropped, 3u);
  EXPECT_FALSE(m.take_latest("m"));
  auto got = m.take_awaited(awaited);
  ASSERT_TRUE(got);
  ASSERT_FALSE(*got);
  EXPECT_EQ(got->error().kind, inf::ErrorKind::protocol);
  EXPECT_EQ(got->error().request_id, awaited);
}

TEST_F(Fixture, SupersededIsCountedAndSkipped) {
  auto r1 = send("m");
  receive(reply(r1, "m", inf::status::superseded));
  EXPECT_FALSE(m.take_latest("m"));
  EXPECT_EQ(m.stats().by_status.at(inf::status::superseded), 1u);
}

TEST_F(Fixture, NonOkRepliesReachTheirSlotToBeRaised) {
  auto r1 = send("m");
  receive(reply(r1, "m", inf::status::queue_full));
  auto got = m.take_latest("m");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->status, inf::status::queue_full);
}

TEST_F(Fixture, RequestReplyNeverReachesGetResultButCountsAsDelivered) {
  auto r1 = send("m");
  auto r2 = send("m", true);
  receive(reply(r2, "m"));
  EXPECT_FALSE(m.take_latest("m"));
  auto got = m.take_awaited(r2);
  ASSERT_TRUE(got && *got);
  EXPECT_EQ((*got)->request_id, r2);
  receive(reply(r1, "m"));  // older than the delivered request() reply
  EXPECT_FALSE(m.take_latest("m"));
  EXPECT_EQ(m.stats().stale_dropped, 1u);
}

TEST_F(Fixture, LateReplyToAnAbandonedRequestIsStale) {
  auto r1 = send("m", true);
  m.abandon(r1);
  receive(reply(r1, "m"));
  EXPECT_FALSE(m.take_awaited(r1));
  EXPECT_EQ(m.stats().stale_dropped, 1u);
}

TEST_F(Fixture, V2ReplyWithoutIdIsMalformedAndFailsEveryWaiter) {
  auto w1 = send("a", true);
  auto w2 = send("b", true);
  auto plain = send("a");
  auto d = reply(0, "", inf::status::invalid_request);
  d.error = "envelope: cannot parse";
  receive(d);
  EXPECT_EQ(m.stats().malformed_dropped, 1u);
  for (auto w : {w1, w2}) {
    auto got = m.take_awaited(w);
    ASSERT_TRUE(got);
    ASSERT_FALSE(*got);
    EXPECT_EQ(got->error().kind, inf::ErrorKind::protocol);
    EXPECT_NE(got->error().message.find("envelope: cannot parse"), std::string::npos);
  }
  receive(reply(plain, "a"));
  EXPECT_TRUE(m.take_latest("a"));
  receive(reply(w1, "a"));  // the failed waiter gave up: its late reply is stale
  EXPECT_EQ(m.stats().stale_dropped, 1u);
}

TEST_F(Fixture, OneDotXReplyMatchesTheOldestOutstandingOfItsModel) {
  auto a1 = send("a");
  auto b1 = send("b");
  auto a2 = send("a");
  receive(reply(0, "a", inf::status::unspecified, 0));
  auto got = m.take_latest("a");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->request_id, a1);
  EXPECT_EQ(got->status, inf::status::ok);
  receive(reply(0, "a", inf::status::unspecified, 0));
  EXPECT_EQ(m.take_latest("a")->request_id, a2);
  receive(reply(0, "a", inf::status::unspecified, 0));  // nothing left for a
  EXPECT_EQ(m.stats().unknown_dropped, 1u);
  (void)b1;
}

TEST(Matcher, OutstandingTableIsBoundedAndForgetsTheOldest) {
  inf::Matcher m(4);
  for (int i = 0; i < 6; ++i) m.track(m.next_request_id(), "m", false, 0);
  EXPECT_EQ(m.outstanding(), 4u);
  m.on_reply(reply(1, "m"), 0);  // forgotten
  EXPECT_EQ(m.stats().unknown_dropped, 1u);
  m.on_reply(reply(6, "m"), 0);
  EXPECT_TRUE(m.take_latest("m"));
}

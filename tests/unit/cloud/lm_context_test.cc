#include "cloud/lm_context.h"

#include <gtest/gtest.h>

namespace cleave::cloud {
namespace {

// A cache of keys and values of `kb` KiB each (one layer, kb * 256 floats apiece).
split::KvCache CacheOf(int64_t kb) {
  split::KvCache c;
  c.keys = {torch::zeros({1, 1, kb * 256, 1})};
  c.values = {torch::zeros({1, 1, kb * 256, 1})};
  return c;
}

// Grows a session's cache to 2 x `kb` KiB as a served request would.
void Grow(LmContextManager& m, const std::string& session, int64_t kb) {
  split::KvCache* c = m.Find(session);
  ASSERT_NE(c, nullptr) << session;
  *c = CacheOf(kb);
  m.Update(session);
}

class LmContextTest : public ::testing::Test {
 protected:
  LmContextManager Make(int64_t budget_kb, int64_t ttl_ms = 1000, size_t max_sessions = 100) {
    LmContextOptions o;
    o.memory_budget_bytes = budget_kb * 1024;
    o.idle_ttl_micros = ttl_ms * 1000;
    o.max_sessions = max_sessions;
    EXPECT_TRUE(o.Validate().ok());
    return LmContextManager(o, clock_);
  }
  FakeClock clock_;
};

TEST_F(LmContextTest, CreatesFindsAccountsAndRemoves) {
  auto m = Make(100);
  EXPECT_EQ(m.Find("a"), nullptr);
  split::KvCache& a = m.Create("a", split::KvCache{});
  EXPECT_EQ(a.length(), 0);
  EXPECT_EQ(m.Find("a"), &a);
  Grow(m, "a", 10);
  EXPECT_EQ(m.stats().bytes, 20 * 1024);  // keys + values
  EXPECT_EQ(m.stats().sessions, 1u);
  // Create replaces: the old bytes leave the account.
  m.Create("a", split::KvCache{});
  EXPECT_EQ(m.stats().bytes, 0);
  EXPECT_EQ(m.stats().created_total, 2u);
  EXPECT_TRUE(m.Remove("a"));
  EXPECT_FALSE(m.Remove("a"));
  EXPECT_EQ(m.Find("a"), nullptr);
  EXPECT_EQ(m.stats().sessions, 0u);
}

TEST_F(LmContextTest, EvictsLeastRecentlyUsedUnderTheBudgetButNeverTheServedSession) {
  auto m = Make(100);  // KiB
  for (const char* s : {"a", "b", "c"}) {
    m.Create(s, split::KvCache{});
    Grow(m, s, 15);  // 30 KiB each: 90 in all
  }
  ASSERT_NE(m.Find("a"), nullptr);  // a is now the most recent; b the least
  m.Create("d", split::KvCache{});
  Grow(m, "d", 15);  // 120 KiB > 100: b goes
  EXPECT_EQ(m.Find("b"), nullptr);
  EXPECT_NE(m.Find("a"), nullptr);
  EXPECT_NE(m.Find("c"), nullptr);
  EXPECT_EQ(m.stats().evicted_total, 1u);
  EXPECT_LE(m.stats().bytes, 100 * 1024);
  // One session bigger than the budget evicts everyone else but itself.
  Grow(m, "d", 80);  // 160 KiB alone
  EXPECT_NE(m.Find("d"), nullptr);
  EXPECT_EQ(m.Find("a"), nullptr);
  EXPECT_EQ(m.Find("c"), nullptr);
  EXPECT_EQ(m.stats().sessions, 1u);
  EXPECT_EQ(m.stats().bytes, 160 * 1024);
  // ...and is the first to go when another session arrives.
  m.Create("e", split::KvCache{});
  EXPECT_EQ(m.Find("d"), nullptr);
  EXPECT_NE(m.Find("e"), nullptr);
}

TEST_F(LmContextTest, SessionCountLimitEvictsTheOldest) {
  auto m = Make(1000, 1000, 2);
  m.Create("a", split::KvCache{});
  m.Create("b", split::KvCache{});
  m.Create("c", split::KvCache{});
  EXPECT_EQ(m.Find("a"), nullptr);
  EXPECT_NE(m.Find("b"), nullptr);
  EXPECT_NE(m.Find("c"), nullptr);
  EXPECT_EQ(m.stats().evicted_total, 1u);
}

TEST_F(LmContextTest, IdleSessionsExpire) {
  auto m = Make(1000, /*ttl_ms=*/100);
  m.Create("old", split::KvCache{});
  Grow(m, "old", 1);
  clock_.Advance(60'000);
  m.Create("new", split::KvCache{});
  clock_.Advance(60'000);  // old idle 120 ms, new 60 ms
  EXPECT_EQ(m.ExpireIdle(), 1u);
  EXPECT_EQ(m.Find("old"), nullptr);
  EXPECT_NE(m.Find("new"), nullptr);  // and touched: fresh again
  clock_.Advance(101'000);
  EXPECT_EQ(m.Find("new"), nullptr);  // found stale on lookup
  EXPECT_EQ(m.stats().expired_total, 2u);
  EXPECT_EQ(m.stats().bytes, 0);
}

TEST_F(LmContextTest, OptionsAreValidated) {
  LmContextOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.memory_budget_bytes = 0;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o = LmContextOptions{};
  o.idle_ttl_micros = 0;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o = LmContextOptions{};
  o.max_sessions = 0;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave::cloud

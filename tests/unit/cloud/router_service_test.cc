#include "cloud/router_service.h"

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/clock.h"
#include "common/metrics.h"
#include "common/transport.h"

namespace cleave::cloud {
namespace {

constexpr int kFlood = 64;

// A flood of requests waits in the ROUTER; the first one's reply is posted while the rest are
// still being taken. That reply must go out within the same turn of the loop (after at most
// 16 more receives), not after the whole flood.
TEST(RouterServiceTest, RepliesPostedDuringAFloodGoOutBeforeTheFloodIsTaken) {
  TransportContext context;
  Metrics metrics;
  Result<std::unique_ptr<RouterService>> service = RouterService::Bind(
      context, "tcp://127.0.0.1:0", SocketOptions{}, SystemClock(), metrics, "cloud");
  ASSERT_TRUE(service.ok()) << service.status().ToString();
  RouterService& router = **service;
  Result<std::unique_ptr<DealerClient>> client = DealerClient::Connect(context, router.endpoint());
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  for (int i = 0; i < kFlood; ++i) {
    ASSERT_TRUE((*client)->Send("request " + std::to_string(i), 1000).ok());
  }
  // Let the whole flood reach the ROUTER's queue, so one turn can take it all.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  int admitted = 0, turns = 0;
  int first_turn = -1, delivered_at = -1, delivered_turn = -1;
  RouterService::Hooks hooks;
  hooks.admit = [&](std::vector<InboundMessage>& burst, int64_t) {
    EXPECT_LE(burst.size(), 16u);
    for (InboundMessage& message : burst) {
      ++admitted;
      if (admitted == 1) {
        first_turn = turns;
        router.Accepted();
        router.Post(RouterReply::Of(message.peer, "answer to " + std::string(message.bytes()), 0,
                                    ReplyKind::kOk, Outcome::kOk));
      } else if (delivered_at < 0 && router.stats().replied_ok == 1) {
        delivered_at = admitted;
        delivered_turn = turns;
      }
    }
  };
  hooks.after_turn = [&] { ++turns; };
  Status served = router.Serve([&] { return admitted >= kFlood || turns > 100; }, hooks);
  ASSERT_TRUE(served.ok()) << served.ToString();

  ASSERT_EQ(admitted, kFlood);
  ASSERT_EQ(first_turn, 0) << "the flood did not arrive before the first turn";
  EXPECT_EQ(delivered_turn, first_turn) << "the reply waited for the next turn";
  EXPECT_GT(delivered_at, 1);
  EXPECT_LE(delivered_at, 18);  // posted at the 1st receive, sent at the 17th at the latest
  Result<std::optional<std::string>> answer = (*client)->Receive(2000);
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
  ASSERT_TRUE(answer->has_value());
  EXPECT_EQ(**answer, "answer to request 0");
}

// Replies posted together (a batch's, PostAll) go out together, in order, each counted once;
// requests reach the owner in arrival order, in bursts of at most 16.
TEST(RouterServiceTest, BurstsOfRequestsInAndBatchesOfRepliesOut) {
  TransportContext context;
  Metrics metrics;
  Result<std::unique_ptr<RouterService>> service = RouterService::Bind(
      context, "tcp://127.0.0.1:0", SocketOptions{}, SystemClock(), metrics, "cloud");
  ASSERT_TRUE(service.ok()) << service.status().ToString();
  RouterService& router = **service;
  Result<std::unique_ptr<DealerClient>> client = DealerClient::Connect(context, router.endpoint());
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  for (int i = 0; i < kFlood; ++i) {
    ASSERT_TRUE((*client)->Send(std::to_string(i), 1000).ok());
  }
  std::vector<std::string> arrived;
  std::vector<RouterReply> batch;  // answered 8 at a time, as a worker would
  RouterService::Hooks hooks;
  hooks.admit = [&](std::vector<InboundMessage>& burst, int64_t) {
    EXPECT_GE(burst.size(), 1u);
    EXPECT_LE(burst.size(), 16u);
    for (InboundMessage& message : burst) {
      arrived.emplace_back(message.bytes());
      router.Accepted();
      const ReplyKind kind = arrived.size() % 2 == 0 ? ReplyKind::kOk : ReplyKind::kError;
      batch.push_back(RouterReply::Of(message.peer, "re:" + arrived.back(), arrived.size(), kind,
                                      kind == ReplyKind::kOk ? Outcome::kOk : Outcome::kRejected));
      if (batch.size() == 8) router.PostAll(batch);
    }
  };
  int turns = 0;
  hooks.after_turn = [&] { ++turns; };
  Status served = router.Serve(
      [&] {
        return (arrived.size() >= size_t{kFlood} && router.in_flight() == 0) || turns > 10000;
      },
      hooks);
  ASSERT_TRUE(served.ok()) << served.ToString();
  ASSERT_EQ(arrived.size(), size_t{kFlood});
  for (int i = 0; i < kFlood; ++i) EXPECT_EQ(arrived[i], std::to_string(i));
  EXPECT_TRUE(batch.empty()) << "PostAll leaves the caller's vector empty";
  EXPECT_EQ(router.stats().replied_ok, uint64_t{kFlood / 2});
  EXPECT_EQ(router.stats().replied_error, uint64_t{kFlood / 2});
  const ServiceMetrics& m = metrics.Service("cloud");
  EXPECT_EQ(m.requests[static_cast<size_t>(Outcome::kOk)]->Value(), kFlood / 2);
  EXPECT_EQ(m.requests[static_cast<size_t>(Outcome::kRejected)]->Value(), kFlood / 2);
  for (int i = 0; i < kFlood; ++i) {
    Result<std::optional<std::string>> answer = (*client)->Receive(2000);
    ASSERT_TRUE(answer.ok() && answer->has_value()) << i;
    EXPECT_EQ(**answer, "re:" + std::to_string(i));
  }
}

}  // namespace
}  // namespace cleave::cloud

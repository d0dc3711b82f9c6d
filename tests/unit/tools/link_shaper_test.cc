// The benchmarks' link-shaping relay: traces parse (and bad ones are refused naming the step),
// messages through it take the trace's round trip and are serialized at its bandwidth, a
// step in the trace changes the delay from then on, and replies reach the right edge.
#include "tools/link_shaper.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace cleave::tools {
namespace {

using ::testing::HasSubstr;

TEST(LinkTraceTest, ParsesStepsAndFindsTheOneInForce) {
  auto trace = LinkTrace::Parse("0:10mbit:5ms,20:200kbit:80ms,40.5:2mbit:20ms");
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  ASSERT_EQ(trace->steps().size(), 3u);
  EXPECT_DOUBLE_EQ(trace->steps()[1].bandwidth_bps, 200e3);
  EXPECT_DOUBLE_EQ(trace->steps()[2].at_s, 40.5);
  EXPECT_DOUBLE_EQ(trace->At(0).rtt_ms, 5);
  EXPECT_DOUBLE_EQ(trace->At(19.99).rtt_ms, 5);
  EXPECT_DOUBLE_EQ(trace->At(20).rtt_ms, 80);
  EXPECT_DOUBLE_EQ(trace->At(1000).bandwidth_bps, 2e6);
  EXPECT_EQ(trace->IndexAt(41), 2u);
}

TEST(LinkTraceTest, BadTracesAreRefusedNamingTheStep) {
  const std::pair<const char*, const char*> bad[] = {
      {"5:10mbit:5ms", "starts with a step at 0"},
      {"0:10mbit:5ms,0:1mbit:5ms", "increasing time order"},
      {"0:10mbyte:5ms", "bandwidth"},
      {"0:0mbit:5ms", "bandwidth"},
      {"0:10mbit:-1ms", "RTT"},
      {"0:10mbit:5", "SECONDS:BANDWIDTH:RTTms"},
      {"0:10mbit", "SECONDS:BANDWIDTH:RTTms"},
      {"x:10mbit:5ms", "SECONDS:BANDWIDTH:RTTms"},
      {"", "SECONDS:BANDWIDTH:RTTms"},
  };
  for (const auto& [text, why] : bad) {
    auto trace = LinkTrace::Parse(text);
    ASSERT_FALSE(trace.ok()) << text;
    EXPECT_EQ(trace.status().code(), StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(trace.status().message(), HasSubstr(why)) << text;
  }
}

// An echo "cloud" behind the shaper.
class LinkShaperTest : public ::testing::Test {
 protected:
  void StartEcho() {
    auto cloud = RouterServer::Bind(context_, "tcp://127.0.0.1:0");
    ASSERT_TRUE(cloud.ok());
    cloud_ = std::move(cloud).value();
    echo_ = std::thread([this] {
      while (!stop_) {
        auto in = cloud_->Receive(20);
        if (!in.ok() || !in->has_value()) continue;
        (void)cloud_->Send((*in)->peer, (*in)->body);
      }
    });
  }
  void TearDown() override {
    stop_ = true;
    if (echo_.joinable()) echo_.join();
  }
  std::unique_ptr<DealerClient> Edge(const LinkShaper& shaper) {
    auto edge = DealerClient::Connect(context_, shaper.endpoint());
    EXPECT_TRUE(edge.ok());
    return std::move(edge).value();
  }
  static double MsSince(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
  }

  TransportContext context_;
  std::unique_ptr<RouterServer> cloud_;
  std::thread echo_;
  std::atomic<bool> stop_{false};
};

TEST_F(LinkShaperTest, RoundTripsTakeTheTracesRttAndStepsChangeIt) {
  StartEcho();
  auto trace = LinkTrace::Parse("0:100mbit:40ms,0.6:100mbit:120ms");
  ASSERT_TRUE(trace.ok());
  auto shaper = LinkShaper::Start(context_, cloud_->endpoint(), *trace, SystemClock());
  ASSERT_TRUE(shaper.ok()) << shaper.status().ToString();
  auto edge = Edge(**shaper);
  for (int i = 0; i < 2; ++i) {  // the first one also connects
    const auto start = std::chrono::steady_clock::now();
    ASSERT_TRUE(edge->Send("ping", 1000).ok());
    auto reply = edge->Receive(2000);
    ASSERT_TRUE(reply.ok() && reply->has_value());
    EXPECT_EQ(**reply, "ping");
    if (i == 1) {
      EXPECT_GE(MsSince(start), 39.0);
      EXPECT_LT(MsSince(start), 100.0);
    }
  }
  while ((*shaper)->Elapsed() < 0.65) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(edge->Send("later", 1000).ok());
  auto reply = edge->Receive(2000);
  ASSERT_TRUE(reply.ok() && reply->has_value());
  EXPECT_GE(MsSince(start), 119.0);
  const LinkShaperStats stats = (*shaper)->stats();
  EXPECT_EQ(stats.up_messages, 3u);
  EXPECT_EQ(stats.down_messages, 3u);
}

// 10 messages of 1250 bytes at 1 Mbit/s: each takes ~10 ms to serialize, so the last reply
// comes after ~100 ms plus the RTT, and they come back in order.
TEST_F(LinkShaperTest, TheUplinkSerializesAtTheTracesBandwidth) {
  StartEcho();
  auto shaper = LinkShaper::Start(context_, cloud_->endpoint(), *LinkTrace::Parse("0:1mbit:10ms"),
                                  SystemClock());
  ASSERT_TRUE(shaper.ok());
  auto edge = Edge(**shaper);
  ASSERT_TRUE(edge->Send("warm", 1000).ok());
  ASSERT_TRUE(edge->Receive(2000).ok());
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(edge->Send(std::string(1248, static_cast<char>('a' + i)), 1000).ok());
  }
  for (int i = 0; i < 10; ++i) {
    auto reply = edge->Receive(3000);
    ASSERT_TRUE(reply.ok() && reply->has_value()) << i;
    EXPECT_EQ((**reply)[0], static_cast<char>('a' + i));  // in order
  }
  const double ms = MsSince(start);
  EXPECT_GE(ms, 100.0 + 10.0 - 2.0);
  EXPECT_LT(ms, 200.0);
}

TEST_F(LinkShaperTest, RepliesReachTheEdgeThatAsked) {
  StartEcho();
  auto shaper = LinkShaper::Start(context_, cloud_->endpoint(), *LinkTrace::Parse("0:10mbit:2ms"),
                                  SystemClock());
  ASSERT_TRUE(shaper.ok());
  auto a = Edge(**shaper);
  auto b = Edge(**shaper);
  ASSERT_TRUE(a->Send("from-a", 1000).ok());
  ASSERT_TRUE(b->Send("from-b", 1000).ok());
  auto ra = a->Receive(2000);
  auto rb = b->Receive(2000);
  ASSERT_TRUE(ra.ok() && ra->has_value() && rb.ok() && rb->has_value());
  EXPECT_EQ(**ra, "from-a");
  EXPECT_EQ(**rb, "from-b");
}

}  // namespace
}  // namespace cleave::tools

namespace cleave::tools {
namespace {

// `bench adaptive` starts the edge behind the relay, warms it up, then restarts the trace so
// every configuration meets its first step at the same moment of its counted requests.
TEST(LinkShaperTraceClockTest, RestartTraceStartsTheTraceAgainNow) {
  TransportContext context;
  FakeClock clock(1'000'000);
  auto shaper =
      LinkShaper::Start(context, "tcp://127.0.0.1:1", *LinkTrace::Parse("0:1mbit:5ms"), clock);
  ASSERT_TRUE(shaper.ok()) << shaper.status().ToString();
  clock.Advance(5'000'000);
  EXPECT_DOUBLE_EQ((*shaper)->Elapsed(), 5.0);
  (*shaper)->RestartTrace();
  EXPECT_DOUBLE_EQ((*shaper)->Elapsed(), 0.0);
  clock.Advance(250'000);
  EXPECT_DOUBLE_EQ((*shaper)->Elapsed(), 0.25);
}

}  // namespace
}  // namespace cleave::tools

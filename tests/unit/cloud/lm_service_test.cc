// LmTailService, the transport-free cloud side of hard-token routing: malformed states,
// unknown models, sessions at the wrong position (resync), token requests and the work each
// reply counts. (The edge's router is tested against a fake cloud, tests/unit/edge.)
#include "cloud/lm_service.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "testing/tiny_lm.h"

namespace cleave::cloud {
namespace {

using lm_wire::LmReply;
using lm_wire::LmRequest;

split::SplitLm Model() { return testing::TinyLm(); }

std::unique_ptr<LmTailService> Service(const split::SplitLm& lm, FakeClock& clock,
                                       int64_t budget = int64_t{64} << 20,
                                       bool serves_tokens = true) {
  LmContextOptions o;
  o.memory_budget_bytes = budget;
  return std::make_unique<LmTailService>("lm", testing::CopyLm(lm), o, clock, serves_tokens);
}

TEST(LmTailServiceTest, RejectsMalformedStatesAndUnknownModelsAndResyncs) {
  const split::SplitLm lm = Model();
  FakeClock clock;
  auto service = Service(lm, clock);
  const int width = lm->spec().bottleneck;
  std::vector<float> values(2 * width, 0.5f);
  LmRequest r;
  r.session = "s";
  r.model = "lm";
  r.states =
      *wire::EncodeTensor(values.data(), {2, static_cast<uint32_t>(width)}, wire::DType::kUInt8, 0);
  r.predict = true;
  // A continuation for a session the cloud never saw: resync at 0.
  LmReply reply = service->Handle(r);
  EXPECT_EQ(reply.status, lm_wire::LmStatus::kResync);
  EXPECT_EQ(reply.position, 0u);
  r.reset_session = true;
  reply = service->Handle(r);
  ASSERT_EQ(reply.status, lm_wire::LmStatus::kOk) << reply.error;
  EXPECT_EQ(reply.position, 2u);
  EXPECT_EQ(reply.log_probs.size(), 256u);
  // A continuation at the wrong position: resync with where the cloud is.
  r.reset_session = false;
  r.start = 5;
  reply = service->Handle(r);
  EXPECT_EQ(reply.status, lm_wire::LmStatus::kResync);
  EXPECT_EQ(reply.position, 2u);
  // Wrong width and unknown model are errors; the session survives them.
  LmRequest wide = r;
  wide.start = 2;
  std::vector<float> more(2 * (width + 1), 0.5f);
  wide.states = *wire::EncodeTensor(more.data(), {2, static_cast<uint32_t>(width + 1)},
                                    wire::DType::kUInt8, 0);
  EXPECT_EQ(service->Handle(wide).status, lm_wire::LmStatus::kError);
  LmRequest other = r;
  other.start = 2;
  other.model = "vision";
  EXPECT_EQ(service->Handle(other).status, lm_wire::LmStatus::kError);
  r.start = 2;
  EXPECT_EQ(service->Handle(r).status, lm_wire::LmStatus::kOk);
  EXPECT_EQ(service->stats().errors, 2u);
  EXPECT_EQ(service->stats().resyncs, 2u);
  // Idle sessions expire.
  clock.Advance(int64_t{3600} * 1000 * 1000);
  EXPECT_EQ(service->ExpireIdle(), 1u);
}

TEST(LmTailServiceTest, TokenRequestsAndTheWorkEachReplyCounts) {
  const split::SplitLm lm = Model();
  const split::LmSpec& spec = lm->spec();
  FakeClock clock;
  auto service = Service(lm, clock);
  const int width = spec.bottleneck;
  std::vector<float> values(3 * width, 0.25f);
  LmRequest states;
  states.session = "split";
  states.states =
      *wire::EncodeTensor(values.data(), {3, static_cast<uint32_t>(width)}, wire::DType::kUInt8, 0);
  states.predict = true;
  states.reset_session = true;
  states.start = 4;  // a context rebuilt from the edge's window
  LmReply reply = service->Handle(states);
  ASSERT_EQ(reply.status, lm_wire::LmStatus::kOk) << reply.error;
  const int cloud_layers = spec.layers - spec.split_after;
  EXPECT_EQ(reply.macs,
            static_cast<uint64_t>(split::LmLayersMacs(spec, cloud_layers, 4, 3) +
                                  3 * split::LmCodecMacs(spec) + split::LmHeadMacs(spec)));
  LmRequest tokens;
  tokens.session = "whole";
  tokens.tokens = "hello";
  tokens.reset_session = true;  // no prediction: no head
  reply = service->Handle(tokens);
  ASSERT_EQ(reply.status, lm_wire::LmStatus::kOk) << reply.error;
  EXPECT_EQ(reply.position, 5u);
  EXPECT_TRUE(reply.log_probs.empty());
  EXPECT_EQ(reply.macs, static_cast<uint64_t>(split::LmLayersMacs(spec, spec.layers, 0, 5) +
                                              10 * split::LmCodecMacs(spec)));
  // A session keeps its kind: states cannot continue a token session, nor tokens a state one.
  LmRequest mixed = states;
  mixed.session = "whole";
  mixed.start = 5;
  mixed.reset_session = false;
  reply = service->Handle(mixed);
  EXPECT_EQ(reply.status, lm_wire::LmStatus::kError);
  EXPECT_NE(reply.error.find("started with tokens"), std::string::npos) << reply.error;
  LmRequest mixed_tokens = tokens;
  mixed_tokens.session = "split";
  mixed_tokens.start = 7;
  mixed_tokens.reset_session = false;
  reply = service->Handle(mixed_tokens);
  EXPECT_EQ(reply.status, lm_wire::LmStatus::kError);
  EXPECT_NE(reply.error.find("started with states"), std::string::npos) << reply.error;
  // Both sessions survived the errors and continue with their own kind.
  tokens.reset_session = false;
  tokens.start = 5;
  tokens.predict = true;
  EXPECT_EQ(service->Handle(tokens).status, lm_wire::LmStatus::kOk);
  EXPECT_EQ(service->stats().tokens, 10u);

  // A cloud without the edge part refuses tokens; a byte outside a smaller vocabulary too.
  auto split_only = Service(lm, clock, int64_t{64} << 20, /*serves_tokens=*/false);
  reply = split_only->Handle(tokens);
  EXPECT_EQ(reply.status, lm_wire::LmStatus::kError);
  EXPECT_NE(reply.error.find("cloud part"), std::string::npos) << reply.error;
  split::LmSpec small = spec;
  small.vocab = 64;
  LmTailService small_service("lm", split::SplitLm(small), {}, clock, true);
  tokens.reset_session = true;
  tokens.tokens = "A";  // 65
  reply = small_service.Handle(tokens);
  EXPECT_EQ(reply.status, lm_wire::LmStatus::kError);
  EXPECT_NE(reply.error.find("outside the vocabulary"), std::string::npos) << reply.error;
}

}  // namespace
}  // namespace cleave::cloud

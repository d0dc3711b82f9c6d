#include "edge/lm_router.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>

#include "cloud/lm_service.h"

namespace cleave::edge {
namespace {

using lm_wire::LmReply;
using lm_wire::LmRequest;

// Sends every request through the real encoding to an in-process cloud service.
class InProcessLink : public LmCloudLink {
 public:
  explicit InProcessLink(cloud::LmTailService* service) : service_(service) {}
  void set_service(cloud::LmTailService* service) { service_ = service; }
  bool down = false;
  int calls = 0;
  Result<LmReply> Call(const LmRequest& request) override {
    ++calls;
    if (down) return Status::Unavailable("cloud unreachable (test)");
    auto decoded = lm_wire::DecodeLmRequest(lm_wire::EncodeLmRequest(request));
    if (!decoded.ok()) return decoded.status();
    return lm_wire::DecodeLmReply(lm_wire::EncodeLmReply(service_->Handle(*decoded)));
  }

 private:
  cloud::LmTailService* service_;
};

split::SplitLm Model() {
  torch::manual_seed(11);
  split::SplitLm lm(split::LmSpec::Tiny());
  lm->eval();
  return lm;
}

// A second handle on the same weights (router and service each own one).
split::SplitLm Copy(const split::SplitLm& from) {
  split::SplitLm to(from->spec());
  torch::NoGradGuard no_grad;
  auto src = from->named_parameters();
  for (auto& p : to->named_parameters()) p.value().copy_(src[p.key()]);
  to->eval();
  return to;
}

std::unique_ptr<cloud::LmTailService> Service(const split::SplitLm& lm, FakeClock& clock,
                                              int64_t budget = int64_t{64} << 20) {
  cloud::LmContextOptions o;
  o.memory_budget_bytes = budget;
  return std::make_unique<cloud::LmTailService>("lm", Copy(lm), o, clock);
}

const std::string kText = "the quick brown fox jumps over";  // 30 bytes < context 32

struct Generation {
  std::vector<RouterStep> steps;
  RouterStats stats;
};

Generation Generate(const split::SplitLm& lm, LmRouterOptions o, LmCloudLink* link,
                    const std::string& text = kText) {
  LmRouter router(Copy(lm), o, link);
  Generation run;
  for (char c : text) {
    auto step = router.Feed(static_cast<unsigned char>(c));
    EXPECT_TRUE(step.ok()) << step.status().ToString();
    run.steps.push_back(*step);
  }
  run.stats = router.stats();
  return run;
}

float MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

// The median exit confidence over the text: a threshold that routes about half the tokens.
double MedianConfidence(const split::SplitLm& lm) {
  LmRouterOptions o;
  o.mode = RouteMode::kEdgeOnly;
  Generation edge = Generate(lm, o, nullptr);
  std::vector<double> c;
  for (const auto& s : edge.steps) c.push_back(s.exit_confidence);
  std::nth_element(c.begin(), c.begin() + c.size() / 2, c.end());
  return c[c.size() / 2];
}

TEST(LmRouterTest, DeferredUploadGivesTheCloudOnlyAnswerForEveryHardToken) {
  const split::SplitLm lm = Model();
  FakeClock clock;
  auto all_service = Service(lm, clock);
  InProcessLink all_link(all_service.get());
  LmRouterOptions cloud_only;
  cloud_only.mode = RouteMode::kCloudOnly;
  cloud_only.session = "reference";
  const Generation reference = Generate(lm, cloud_only, &all_link);
  EXPECT_EQ(reference.stats.routed, static_cast<int64_t>(kText.size()));

  auto service = Service(lm, clock);
  InProcessLink link(service.get());
  LmRouterOptions routed;
  routed.session = "routed";
  routed.exit_threshold = MedianConfidence(lm);
  const Generation run = Generate(lm, routed, &link);
  int hard = 0;
  for (size_t i = 0; i < run.steps.size(); ++i) {
    if (!run.steps[i].from_cloud) continue;
    ++hard;
    EXPECT_LT(MaxDiff(run.steps[i].log_probs, reference.steps[i].log_probs), 1e-4) << i;
  }
  EXPECT_GE(hard, 5);
  EXPECT_LE(hard, 25);
  EXPECT_EQ(run.stats.routed, hard);
  EXPECT_EQ(run.stats.requests, hard);  // one request per hard token, no resync
  EXPECT_EQ(run.stats.resyncs, 0);
  // Every state before the last hard token reached the cloud exactly once.
  size_t last_hard = 0;
  for (size_t i = 0; i < run.steps.size(); ++i) {
    if (run.steps[i].from_cloud) last_hard = i;
  }
  EXPECT_EQ(service->stats().states, last_hard + 1);
  // Local tokens use the exit head and send nothing.
  for (const auto& s : run.steps) {
    if (!s.from_cloud) {
      EXPECT_EQ(s.bytes_sent, 0);
    }
  }
}

TEST(LmRouterTest, EvictedOrRestartedCloudIsRebuiltAndAnswersAreUnchanged) {
  const split::SplitLm lm = Model();
  FakeClock clock;
  auto ample = Service(lm, clock);
  InProcessLink ample_link(ample.get());
  LmRouterOptions o;
  o.session = "a";
  o.exit_threshold = MedianConfidence(lm);
  const Generation reference = Generate(lm, o, &ample_link);

  // A budget too small for two sessions: A and B, interleaved, evict each other.
  auto tight = Service(lm, clock, /*budget=*/12 * 1024);
  InProcessLink link(tight.get());
  LmRouter a(Copy(lm), o, &link);
  LmRouterOptions ob = o;
  ob.session = "b";
  LmRouter b(Copy(lm), ob, &link);
  for (size_t i = 0; i < kText.size(); ++i) {
    auto sa = a.Feed(static_cast<unsigned char>(kText[i]));
    auto sb = b.Feed(static_cast<unsigned char>(kText[kText.size() - 1 - i]));
    ASSERT_TRUE(sa.ok() && sb.ok());
    EXPECT_EQ(sa->from_cloud, reference.steps[i].from_cloud) << i;
    EXPECT_FALSE(sa->degraded);
    EXPECT_LT(MaxDiff(sa->log_probs, reference.steps[i].log_probs), 1e-4) << i;
    if (i == kText.size() / 2) {
      // The cloud restarts: a new service knows no session.
      tight = Service(lm, clock, 12 * 1024);
      link.set_service(tight.get());
    }
  }
  EXPECT_GT(a.stats().resyncs + b.stats().resyncs, 0);
  EXPECT_GT(a.stats().resets, 1);  // the first request and at least one rebuild
  EXPECT_GT(tight->context_stats().evicted_total, 0u);
}

TEST(LmRouterTest, UnreachableCloudDegradesToTheExitHeadAndRecovers) {
  const split::SplitLm lm = Model();
  FakeClock clock;
  auto service = Service(lm, clock);
  InProcessLink link(service.get());
  LmRouterOptions o;
  o.mode = RouteMode::kCloudOnly;
  o.session = "s";
  LmRouter router(Copy(lm), o, &link);
  LmRouterOptions edge_only;
  edge_only.mode = RouteMode::kEdgeOnly;
  const Generation exit_run = Generate(lm, edge_only, nullptr);
  link.down = true;
  for (int i = 0; i < 5; ++i) {
    auto s = router.Feed(static_cast<unsigned char>(kText[i]));
    ASSERT_TRUE(s.ok());
    EXPECT_TRUE(s->degraded);
    EXPECT_FALSE(s->from_cloud);
    EXPECT_EQ(s->log_probs, exit_run.steps[i].log_probs);
  }
  link.down = false;
  auto s = router.Feed(static_cast<unsigned char>(kText[5]));
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->from_cloud);  // the whole window re-sent with reset
  EXPECT_EQ(service->stats().states, 6u);
  EXPECT_EQ(router.stats().degraded, 5);
  router.End();
  EXPECT_EQ(service->context_stats().sessions, 0u);
  // Without any link, hard tokens are degraded too; bytes outside the vocabulary refused.
  LmRouter alone(Copy(lm), o, nullptr);
  auto d = alone.Feed('x');
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->degraded);
  EXPECT_EQ(alone.Feed(256).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(alone.Feed(-1).status().code(), StatusCode::kInvalidArgument);
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

}  // namespace
}  // namespace cleave::edge

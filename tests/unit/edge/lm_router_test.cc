// LmRouter, the edge side of hard-token routing, against a fake cloud that speaks the lm
// wire (tests/testing/fake_lm_cloud.h): every request and reply goes through the real
// encoding, as between the daemons.
#include "edge/lm_router.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>

#include "testing/fake_lm_cloud.h"
#include "testing/tiny_lm.h"

namespace cleave::edge {
namespace {

using lm_wire::LmReply;
using lm_wire::LmRequest;
using testing::FakeLmCloud;

// Sends every request through the real encoding to an in-process (fake) cloud.
class InProcessLink : public LmCloudLink {
 public:
  explicit InProcessLink(FakeLmCloud* service) : service_(service) {}
  void set_service(FakeLmCloud* service) { service_ = service; }
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
  FakeLmCloud* service_;
};

split::SplitLm Model() { return testing::TinyLm(); }

// A second handle on the same weights (router and cloud each own one).
split::SplitLm Copy(const split::SplitLm& from) { return testing::CopyLm(from); }

// A cloud on its own copy of `lm`'s weights, holding at most `max_sessions` sessions.
std::unique_ptr<FakeLmCloud> Service(const split::SplitLm& lm, size_t max_sessions = 64,
                                     bool serves_tokens = true) {
  return std::make_unique<FakeLmCloud>(Copy(lm), serves_tokens, max_sessions);
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

// The next-byte distributions of the whole model (fp32 bottleneck code) over kText.
std::vector<std::vector<float>> WholeModel(split::SplitLm lm) {
  torch::NoGradGuard no_grad;
  torch::Tensor tokens = torch::empty({1, static_cast<int64_t>(kText.size())}, torch::kLong);
  for (size_t i = 0; i < kText.size(); ++i) {
    tokens[0][static_cast<int64_t>(i)] = static_cast<unsigned char>(kText[i]);
  }
  const torch::Tensor lp = torch::log_softmax(lm->forward(tokens).final_logits, 2).contiguous();
  std::vector<std::vector<float>> out;
  for (int64_t i = 0; i < lp.size(1); ++i) {
    const float* row = lp.data_ptr<float>() + i * lp.size(2);
    out.emplace_back(row, row + lp.size(2));
  }
  return out;
}

// The u8 wire code's effect on the cloud's next-byte log-probabilities, against the fp32
// code (docs/design.md states this tolerance).
constexpr float kCodeTolerance = 0.05f;

TEST(LmRouterTest, CloudOnlySendsTokensAndGivesTheWholeModelsAnswer) {
  const split::SplitLm lm = Model();
  auto service = Service(lm);
  InProcessLink link(service.get());
  LmRouterOptions o;
  o.mode = RouteMode::kCloudOnly;
  o.session = "cloud-only";
  LmRouter router(Copy(lm), o, &link);
  // Prompt bytes are buffered (no answer, nothing sent) and go up with the next request.
  for (int i = 0; i < 3; ++i) {
    auto s = router.Feed(static_cast<unsigned char>(kText[static_cast<size_t>(i)]), false);
    ASSERT_TRUE(s.ok());
    EXPECT_TRUE(s->log_probs.empty());
    EXPECT_EQ(s->bytes_sent, 0);
  }
  EXPECT_EQ(link.calls, 0);
  const auto whole = WholeModel(lm);
  for (size_t i = 3; i < kText.size(); ++i) {
    auto s = router.Feed(static_cast<unsigned char>(kText[i]));
    ASSERT_TRUE(s.ok());
    EXPECT_TRUE(s->from_cloud);
    EXPECT_FALSE(s->degraded);
    EXPECT_GT(s->bytes_sent, 0);
    EXPECT_LT(MaxDiff(s->log_probs, whole[i]), 1e-4) << i;
  }
  EXPECT_EQ(service->stats().tokens, kText.size());
  EXPECT_EQ(service->stats().states, 0u);
  EXPECT_EQ(router.stats().routed, static_cast<int64_t>(kText.size()) - 3);
  // The cloud computed every layer for every token and the head once per answer.
  const split::LmSpec& spec = lm->spec();
  const auto n = static_cast<int64_t>(kText.size());
  EXPECT_EQ(
      router.stats().cloud_macs,
      static_cast<uint64_t>(split::LmLayersMacs(spec, spec.layers, 0, n) +
                            2 * n * split::LmCodecMacs(spec) + (n - 3) * split::LmHeadMacs(spec)));
  router.End();
  EXPECT_EQ(service->sessions(), 0u);

  // A cloud holding only the cloud part refuses tokens: the router degrades to its exit.
  auto split_only = Service(lm, 64, /*serves_tokens=*/false);
  InProcessLink split_link(split_only.get());
  LmRouter refused(Copy(lm), o, &split_link);
  auto s = refused.Feed('a');
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->degraded);
  EXPECT_EQ(split_only->stats().errors, 1u);
}

TEST(LmRouterTest, DeferredUploadGivesTheCloudOnlyAnswerForEveryHardToken) {
  const split::SplitLm lm = Model();
  auto all_service = Service(lm);
  InProcessLink all_link(all_service.get());
  // Every token hard: the split path's answers (u8 codes) for every prefix.
  LmRouterOptions all_routed;
  all_routed.exit_threshold = 2.0;
  all_routed.session = "reference";
  const Generation reference = Generate(lm, all_routed, &all_link);
  EXPECT_EQ(reference.stats.routed, static_cast<int64_t>(kText.size()));
  EXPECT_EQ(reference.stats.requests, static_cast<int64_t>(kText.size()));
  // ... which are the whole model's (cloud-only) answers up to the code's quantization.
  const auto whole = WholeModel(lm);
  float worst = 0;
  for (size_t i = 0; i < kText.size(); ++i) {
    worst = std::max(worst, MaxDiff(reference.steps[i].log_probs, whole[i]));
  }
  EXPECT_LT(worst, kCodeTolerance);
  EXPECT_GT(worst, 0.f);  // the code really is quantized

  auto service = Service(lm);
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
  auto ample = Service(lm);
  InProcessLink ample_link(ample.get());
  LmRouterOptions o;
  o.session = "a";
  o.exit_threshold = MedianConfidence(lm);
  const Generation reference = Generate(lm, o, &ample_link);

  // Room for one session only: A and B, interleaved, evict each other.
  auto tight = Service(lm, /*max_sessions=*/1);
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
      tight = Service(lm, 1);
      link.set_service(tight.get());
    }
  }
  EXPECT_GT(a.stats().resyncs + b.stats().resyncs, 0);
  EXPECT_GT(a.stats().resets, 1);  // the first request and at least one rebuild
  EXPECT_GT(tight->stats().evicted, 0u);
}

TEST(LmRouterTest, UnreachableCloudDegradesToTheExitHeadAndRecovers) {
  const split::SplitLm lm = Model();
  auto service = Service(lm);
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
    // Cloud-only computes nothing on the edge until the cloud fails; then the edge
    // catches up on the buffered tokens and answers from its exit.
    EXPECT_LT(MaxDiff(s->log_probs, exit_run.steps[i].log_probs), 1e-5) << i;
  }
  link.down = false;
  auto s = router.Feed(static_cast<unsigned char>(kText[5]));
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->from_cloud);  // the whole window re-sent with reset
  EXPECT_EQ(service->stats().tokens, 6u);
  EXPECT_EQ(router.stats().degraded, 5);
  router.End();
  EXPECT_EQ(service->sessions(), 0u);
  // Without any link, hard tokens are degraded too; bytes outside the vocabulary refused.
  LmRouter alone(Copy(lm), o, nullptr);
  auto d = alone.Feed('x');
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->degraded);
  EXPECT_EQ(alone.Feed(256).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(alone.Feed(-1).status().code(), StatusCode::kInvalidArgument);

  // The cloud answers beyond the context window, then fails: the edge's cache has a gap
  // and restarts from the token window (its own approximation, as the cloud's rebuild).
  LmRouter long_run(Copy(lm), o, &link);
  const int64_t context = lm->spec().context;
  for (int64_t i = 0; i < context + 8; ++i) {
    ASSERT_TRUE(long_run.Feed('a' + static_cast<int>(i % 26)).ok());
  }
  link.down = true;
  auto late = long_run.Feed('z');
  ASSERT_TRUE(late.ok());
  EXPECT_TRUE(late->degraded);
  ASSERT_EQ(late->log_probs.size(), 256u);
  float total = 0;
  for (float v : late->log_probs) total += std::exp(v);
  EXPECT_NEAR(total, 1.0f, 1e-3);
}

}  // namespace
}  // namespace cleave::edge

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
                                              int64_t budget = int64_t{64} << 20,
                                              bool serves_tokens = true) {
  cloud::LmContextOptions o;
  o.memory_budget_bytes = budget;
  return std::make_unique<cloud::LmTailService>("lm", Copy(lm), o, clock, serves_tokens);
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
  FakeClock clock;
  auto service = Service(lm, clock);
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
  EXPECT_EQ(service->context_stats().sessions, 0u);

  // A cloud holding only the cloud part refuses tokens: the router degrades to its exit.
  auto split_only = Service(lm, clock, int64_t{64} << 20, /*serves_tokens=*/false);
  InProcessLink split_link(split_only.get());
  LmRouter refused(Copy(lm), o, &split_link);
  auto s = refused.Feed('a');
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->degraded);
  EXPECT_EQ(split_only->stats().errors, 1u);
}

TEST(LmRouterTest, DeferredUploadGivesTheCloudOnlyAnswerForEveryHardToken) {
  const split::SplitLm lm = Model();
  FakeClock clock;
  auto all_service = Service(lm, clock);
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
  EXPECT_EQ(service->context_stats().sessions, 0u);
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
  cloud::LmTailService small_service("lm", split::SplitLm(small), {}, clock, true);
  tokens.reset_session = true;
  tokens.tokens = "A";  // 65
  reply = small_service.Handle(tokens);
  EXPECT_EQ(reply.status, lm_wire::LmStatus::kError);
  EXPECT_NE(reply.error.find("outside the vocabulary"), std::string::npos) << reply.error;
}

}  // namespace
}  // namespace cleave::edge

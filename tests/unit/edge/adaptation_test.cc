#include "edge/adaptation.h"

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "split/bundle.h"
#include "split/head_int8_graph.h"
#include "split/imported_model.h"
#include "split/vision_bundle.h"
#include "testing/tiny_bundle.h"
#include "testing/tiny_torchscript.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;

class AdaptationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempPath("adaptation");
    ASSERT_TRUE(testing::WriteTinyBundle(dir_ / "bundle").ok());
    auto bundle = Bundle::Open(dir_ / "bundle");
    ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
    bundle_ = std::make_unique<Bundle>(std::move(bundle).value());
    head_.int8_engine = "reference";
  }
  void TearDown() override { fs::remove_all(dir_); }

  AdaptOptions Options() const {
    AdaptOptions o;
    o.enabled = true;
    o.scope = "exits";
    o.strategy.strategy = "er";
    o.strategy.replay.capacity = 50;
    o.min_new = 1000;  // cycles only when a test asks (AdaptNow)
    o.window = 1000;
    o.batch_size = 16;
    return o;
  }
  Result<std::unique_ptr<EdgeLearner>> Make(AdaptOptions o) { return MakeFor(*bundle_, o); }
  // `n` served inputs the cloud answered (teacher logits favouring class i % 10).
  void Teach(EdgeLearner& learner, int n, uint64_t first_id = 1) {
    const torch::Tensor images = testing::RandomImages(n, first_id);
    for (int i = 0; i < n; ++i) {
      Observation o;
      o.peer = "app";
      o.request_id = first_id + i;
      o.image = images[i];
      o.teacher = torch::zeros({10});
      o.teacher[(first_id + i) % 10] = 4.0;
      learner.Observe(std::move(o));
    }
  }

  // The tiny imported model (testing/tiny_torchscript.h: a TorchScript head, one exit, two
  // classes, 1x8x8 inputs) with an int8 head, written as a bundle at dir_/name and opened.
  std::unique_ptr<Bundle> ImportedBundle(const std::string& name) {
    split::ImportedSplitModel model = testing::TinyImportedModel();
    torch::manual_seed(5);
    auto int8 = split::Int8GraphHead::Quantize(
        model.head, torch::rand({32, 1, testing::kTinyChainSide, testing::kTinyChainSide}));
    EXPECT_TRUE(int8.ok()) << int8.status().ToString();
    if (!int8.ok()) return nullptr;
    model.int8_head = std::make_shared<split::Int8GraphHead>(std::move(int8).value());
    Status written = split::WriteImportedBundle(dir_ / name, model);
    EXPECT_TRUE(written.ok()) << written.ToString();
    auto bundle = Bundle::Open(dir_ / name);
    EXPECT_TRUE(bundle.ok()) << bundle.status().ToString();
    if (!bundle.ok()) return nullptr;
    return std::make_unique<Bundle>(std::move(bundle).value());
  }
  // The tiny bundle with a calibration that measured an exit rate of 50 % (the drift test's
  // reference), written at dir_/calibrated and opened; null (with a failure) otherwise.
  std::unique_ptr<Bundle> CalibratedBundle() {
    split::VisionBundleParts parts;
    parts.head_int8 = true;
    auto model = split::ReadVisionBundle(*bundle_, parts);
    EXPECT_TRUE(model.ok()) << model.status().ToString();
    if (!model.ok()) return nullptr;
    model->calibration = {{"exit_fraction", 0.5}, {"target", "drop:0.2"}};
    Status written = split::WriteVisionBundle(dir_ / "calibrated", *model);
    EXPECT_TRUE(written.ok()) << written.ToString();
    auto bundle = Bundle::Open(dir_ / "calibrated");
    EXPECT_TRUE(bundle.ok()) << bundle.status().ToString();
    if (!bundle.ok()) return nullptr;
    return std::make_unique<Bundle>(std::move(bundle).value());
  }
  Result<std::unique_ptr<EdgeLearner>> MakeFor(const Bundle& bundle, AdaptOptions o) {
    return EdgeLearner::Create(
        std::move(o), bundle, head_,
        [this](std::unique_ptr<EdgeEngine> engine) {
          ++swaps_;
          last_ = std::move(engine);
        },
        nullptr);
  }
  static torch::Tensor ImportedImages(int64_t n, uint64_t seed) {
    torch::manual_seed(seed);
    return torch::rand({n, 1, testing::kTinyChainSide, testing::kTinyChainSide});
  }
  // `n` served inputs of the imported model that the cloud answered, all with class 1.
  void TeachImported(EdgeLearner& learner, int n, uint64_t first_id = 1) {
    const torch::Tensor images = ImportedImages(n, first_id);
    for (int i = 0; i < n; ++i) {
      Observation o;
      o.peer = "app";
      o.request_id = first_id + i;
      o.image = images[i];
      o.teacher = torch::tensor({0.f, 4.f});
      learner.Observe(std::move(o));
    }
  }
  // An imported bundle adapts: the swapped engine's exit answers moved towards the cloud's
  // while its features and the wire bytes it sends are exactly the bundle's.
  void ExpectImportedExitsAdaptAndTheWireHolds() {
    std::unique_ptr<Bundle> imported = ImportedBundle("imported");
    ASSERT_NE(imported, nullptr);
    auto learner = MakeFor(*imported, Options());
    ASSERT_TRUE(learner.ok()) << learner.status().ToString();
    TeachImported(**learner, 64);
    Status adapted = (*learner)->AdaptNow();
    ASSERT_TRUE(adapted.ok()) << adapted.ToString();
    ASSERT_EQ(swaps_, 1);
    ASSERT_NE(last_, nullptr);
    EXPECT_EQ((*learner)->stats().kept_cycles, 0);
    ASSERT_NE(last_->model().imported(), nullptr);
    EXPECT_EQ(last_->model().engine(), head_.int8 ? "reference" : "fp32");
    auto original = split::EdgeModel::Load(*imported, head_);
    ASSERT_TRUE(original.ok()) << original.status().ToString();
    const torch::Tensor probe = ImportedImages(8, 99);
    auto a = (*original)->Run(probe);
    auto b = last_->model().Run(probe);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->exit_logits.size(), 1u);
    ASSERT_EQ(b->exit_logits.size(), 1u);
    EXPECT_FALSE(torch::allclose(a->exit_logits[0], b->exit_logits[0]));
    const auto class1 = [](const torch::Tensor& logits) {
      return torch::softmax(logits, 1).select(1, 1).mean().item<double>();
    };
    EXPECT_GT(class1(b->exit_logits[0]), class1(a->exit_logits[0]));  // the cloud's class
    EXPECT_TRUE(torch::equal(a->features, b->features));
    // The wire bytes of the same inputs, every row offloaded (a threshold above 1).
    EdgeEngine bundle_engine(std::move(original).value());
    const std::vector<uint64_t> ids = {1, 2, 3, 4, 5, 6, 7, 8};
    const std::vector<float> offload(8, 2.0f);
    const std::vector<uint32_t> deadlines(8, 0);
    auto sent_by_bundle = bundle_engine.Decide(probe, ids, offload, deadlines);
    auto sent_adapted = last_->Decide(probe, ids, offload, deadlines);
    ASSERT_TRUE(sent_by_bundle.ok() && sent_adapted.ok());
    ASSERT_EQ(sent_adapted->size(), 8u);
    for (size_t i = 0; i < 8; ++i) {
      ASSERT_EQ((*sent_adapted)[i].exit_index, -1);
      EXPECT_FALSE((*sent_adapted)[i].offload_request.empty());
      EXPECT_EQ((*sent_by_bundle)[i].offload_request, (*sent_adapted)[i].offload_request) << i;
    }
  }

  fs::path dir_;
  std::unique_ptr<Bundle> bundle_;
  split::EdgeModel::Options head_;
  std::atomic<int> swaps_{0};
  std::unique_ptr<EdgeEngine> last_;
};

TEST_F(AdaptationTest, LearnsFromTheTeacherAndSwapsAnAdaptedEngineIn) {
  auto learner = Make(Options());
  ASSERT_TRUE(learner.ok()) << learner.status().ToString();
  EXPECT_EQ((*learner)->AdaptNow().code(), StatusCode::kFailedPrecondition);  // nothing yet
  EXPECT_EQ(swaps_, 0);
  Teach(**learner, 64);
  ASSERT_TRUE((*learner)->AdaptNow().ok());
  EXPECT_EQ(swaps_, 1);
  ASSERT_NE(last_, nullptr);
  const LearnerStats stats = (*learner)->stats();
  EXPECT_EQ(stats.cycles, 1);
  EXPECT_EQ(stats.observed, 64);
  EXPECT_EQ(stats.pending_rows, 12);  // every fifth row checked the cycle; it trains next
  EXPECT_EQ(stats.buffer_rows, 50);   // ER kept a reservoir of what it trained on
  // The adapted exit answers differently from the bundle's.
  auto original = split::EdgeModel::Load(*bundle_, head_);
  ASSERT_TRUE(original.ok());
  const torch::Tensor probe = testing::RandomImages(8, 99);
  auto a = (*original)->Run(probe);
  auto b = last_->model().Run(probe);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE(torch::allclose(a->exit_logits[0], b->exit_logits[0]));
  // Scope exits: the code sent to the cloud is the bundle's (same int8 trunk up to the
  // re-observed activation ranges: within the wire's quantization step).
  EXPECT_LT((a->features - b->features).abs().max().item<double>(),
            0.25 * a->features.abs().max().item<double>());
}

TEST_F(AdaptationTest, ExitsThatWouldContradictTheHeldOutCloudAnswersAreNotSwappedIn) {
  // One input, answered by the cloud again and again: class 2 on the rows that train, class
  // 1 on every fifth (held out). Training makes the exit confident in class 2, which the
  // held-out answers contradict: the cycle is kept out (the learner goes on from it).
  AdaptOptions o = Options();
  o.lr = 0.1;
  o.epochs = 10;
  auto learner = Make(o);
  ASSERT_TRUE(learner.ok());
  const torch::Tensor image = testing::RandomImages(1, 8)[0];
  for (int i = 0; i < 100; ++i) {
    Observation o;
    o.peer = "app";
    o.request_id = static_cast<uint64_t>(i + 1);
    o.image = image;
    o.teacher = torch::zeros({10});
    o.teacher[i % 5 == 4 ? 1 : 2] = 20.0;
    (*learner)->Observe(std::move(o));
  }
  ASSERT_TRUE((*learner)->AdaptNow().ok());
  EXPECT_EQ(swaps_, 0);
  EXPECT_EQ((*learner)->stats().kept_cycles, 1);
  // A learner whose held-out answers agree with the rest swaps the same training in.
  auto agreeing = Make(o);
  ASSERT_TRUE(agreeing.ok());
  for (int i = 0; i < 100; ++i) {
    Observation a;
    a.peer = "app";
    a.request_id = static_cast<uint64_t>(1000 + i);
    a.image = image;
    a.teacher = torch::zeros({10});
    a.teacher[2] = 20.0;
    (*agreeing)->Observe(std::move(a));
  }
  ASSERT_TRUE((*agreeing)->AdaptNow().ok());
  EXPECT_EQ(swaps_, 1);
  EXPECT_EQ((*agreeing)->stats().kept_cycles, 0);
}

// Cycles run only while the served exit rate is significantly below the bundle's calibrated
// one: on traffic like the calibration data a cycle could only push the exits past their
// calibrated threshold.
TEST_F(AdaptationTest, CyclesWaitForTheExitRateToFallBelowTheCalibratedOne) {
  std::unique_ptr<Bundle> calibrated = CalibratedBundle();
  ASSERT_NE(calibrated, nullptr);
  auto learner = MakeFor(*calibrated, Options());
  ASSERT_TRUE(learner.ok()) << learner.status().ToString();
  // 200 requests answered by the exit, 56 by the cloud: 78 % at the exit, above 50 %.
  const torch::Tensor images = testing::RandomImages(200, 40);
  for (int i = 0; i < 200; ++i) {
    Observation o;
    o.peer = "app";
    o.request_id = static_cast<uint64_t>(5000 + i);
    o.image = images[i];
    o.exit_logits = torch::zeros({10});
    (*learner)->Observe(std::move(o));
  }
  Teach(**learner, 56);
  ASSERT_TRUE((*learner)->AdaptNow().ok());
  EXPECT_EQ(swaps_, 0);
  LearnerStats stats = (*learner)->stats();
  EXPECT_EQ(stats.skipped_cycles, 1);
  EXPECT_EQ(stats.cycles, 0);
  EXPECT_EQ(stats.pending_rows, 56);  // kept for when a cycle runs
  // Then only cloud answers: the exit rate is far below the calibrated 50 %.
  Teach(**learner, 64, 100);
  ASSERT_TRUE((*learner)->AdaptNow().ok());
  stats = (*learner)->stats();
  EXPECT_EQ(stats.skipped_cycles, 1);
  EXPECT_EQ(stats.cycles, 1);
  EXPECT_EQ(swaps_ + stats.kept_cycles, 1);
}

// The learner's own thread, not AdaptNow: every edge.adapt_min_new labelled inputs it decides
// once, so the drift test sees a window of that many (a skipped decision does not make the
// next one judge a handful of requests).
TEST_F(AdaptationTest, TheLearnerThreadAdaptsOnceTheTrafficDrifts) {
  std::unique_ptr<Bundle> calibrated = CalibratedBundle();
  ASSERT_NE(calibrated, nullptr);
  AdaptOptions o = Options();
  o.min_new = 32;
  o.cpu_share = 1.0;
  auto learner = MakeFor(*calibrated, o);
  ASSERT_TRUE(learner.ok()) << learner.status().ToString();
  const auto wait_for = [&](const std::function<bool(const LearnerStats&)>& done) {
    for (int i = 0; i < 600 && !done((*learner)->stats()); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return done((*learner)->stats());
  };
  // Like the calibration data: 3 exit answers for each cloud answer, 64 cloud answers.
  const torch::Tensor images = testing::RandomImages(192, 41);
  for (int k = 0; k < 64; ++k) {
    for (int e = 0; e < 3; ++e) {
      Observation x;
      x.peer = "app";
      x.request_id = static_cast<uint64_t>(7000 + 3 * k + e);
      x.image = images[3 * k + e];
      x.exit_logits = torch::zeros({10});
      (*learner)->Observe(std::move(x));
    }
    Teach(**learner, 1, static_cast<uint64_t>(100 + k));
  }
  ASSERT_TRUE(wait_for([](const LearnerStats& s) { return s.skipped_cycles >= 1; }));
  EXPECT_EQ((*learner)->stats().cycles, 0);
  EXPECT_EQ(swaps_, 0);
  // Then the exits stop answering: the next window has drifted.
  Teach(**learner, 64, 1000);
  ASSERT_TRUE(wait_for([](const LearnerStats& s) { return s.cycles >= 1; }))
      << "no cycle ran after the drift";
  EXPECT_EQ(swaps_ + (*learner)->stats().kept_cycles, (*learner)->stats().cycles);
}

TEST_F(AdaptationTest, ScopeAutoAdaptsTheHeadOfOwnBundlesAndTheExitsOfImportedOnes) {
  AdaptOptions o = Options();
  o.scope = "auto";
  auto own = Make(o);
  ASSERT_TRUE(own.ok()) << own.status().ToString();
  EXPECT_EQ((*own)->scope(), "head");
  std::unique_ptr<Bundle> imported = ImportedBundle("imported-auto");
  ASSERT_NE(imported, nullptr);
  auto theirs = MakeFor(*imported, o);
  ASSERT_TRUE(theirs.ok()) << theirs.status().ToString();
  EXPECT_EQ((*theirs)->scope(), "exits");
  o.scope = "blocks";
  auto refused = Make(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("auto, exits or head"), std::string::npos)
      << refused.status().ToString();
}

TEST_F(AdaptationTest, ScopeHeadTrainsTheBlocksBeforeTheEncoderWithoutDiverging) {
  AdaptOptions o = Options();
  o.scope = "head";
  o.epochs = 5;
  auto learner = Make(o);
  ASSERT_TRUE(learner.ok()) << learner.status().ToString();
  Teach(**learner, 64);
  Status s = (*learner)->AdaptNow();
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(swaps_, 1);
}

TEST_F(AdaptationTest, UnlabelledInputsWaitForFeedbackAndConfidentExitsArePseudoLabels) {
  AdaptOptions o = Options();
  o.pseudo_margin = 1e-6;  // every exit answer with a unique top class
  auto learner = Make(o);
  ASSERT_TRUE(learner.ok());
  const torch::Tensor images = testing::RandomImages(3, 5);
  // An input answered degraded (no label), then its true class arrives.
  Observation unlabelled;
  unlabelled.peer = "app";
  unlabelled.request_id = 7;
  unlabelled.image = images[0];
  (*learner)->Observe(unlabelled);
  EXPECT_EQ((*learner)->AdaptNow().code(), StatusCode::kFailedPrecondition);
  edge_api::FeedbackReply reply = (*learner)->Feedback("app", {7, 3});
  EXPECT_TRUE(reply.accepted) << reply.error;
  // An exit answer becomes a pseudo-label.
  Observation exit;
  exit.peer = "app";
  exit.request_id = 8;
  exit.image = images[1];
  exit.exit_logits = torch::tensor({0.f, 3.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f});
  (*learner)->Observe(exit);
  ASSERT_TRUE((*learner)->AdaptNow().ok());
  EXPECT_EQ((*learner)->stats().observed, 2);
}

TEST_F(AdaptationTest, FeedbackRejectsUnknownIdsOtherConnectionsAndClassesOutOfRange) {
  AdaptOptions o = Options();
  o.feedback_window = 2;
  auto learner = Make(o);
  ASSERT_TRUE(learner.ok());
  Teach(**learner, 3, 100);  // ids 100, 101, 102; only the last 2 can get feedback
  edge_api::FeedbackReply r = (*learner)->Feedback("app", {999, 1});
  EXPECT_FALSE(r.accepted);
  EXPECT_NE(r.error.find("unknown request id 999"), std::string::npos) << r.error;
  r = (*learner)->Feedback("app", {100, 1});  // too old
  EXPECT_FALSE(r.accepted);
  EXPECT_NE(r.error.find("last 2 requests"), std::string::npos) << r.error;
  r = (*learner)->Feedback("another-app", {102, 1});  // identity comes from the connection
  EXPECT_FALSE(r.accepted);
  r = (*learner)->Feedback("app", {102, 10});
  EXPECT_FALSE(r.accepted);
  EXPECT_NE(r.error.find("outside the model's classes 0..9"), std::string::npos) << r.error;
  r = (*learner)->Feedback("app", {102, -1});
  EXPECT_FALSE(r.accepted);
  r = (*learner)->Feedback("app", {102, 9});
  EXPECT_TRUE(r.accepted) << r.error;
  EXPECT_EQ(r.request_id, 102u);
}

TEST_F(AdaptationTest, RowsSurviveARestartSealedAndACorruptFileIsRefused) {
  AdaptOptions o = Options();
  o.buffer_file = (dir_ / "rows.bin").string();
  crypto::Key256 key{};
  key.fill(3);
  o.buffer_key = key;
  {
    auto learner = Make(o);
    ASSERT_TRUE(learner.ok()) << learner.status().ToString();
    Teach(**learner, 40);
    ASSERT_TRUE((*learner)->AdaptNow().ok());  // 32 rows trained (8 checked), buffer saved
    Teach(**learner, 10, 500);                 // pending at shutdown
    // Let the learner thread drain the inbox before it stops (a cycle needs 1000).
    for (int i = 0; i < 100 && (*learner)->stats().pending_rows < 10; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  for (const char* name : {"rows.bin", "rows.bin.pending"}) {
    struct stat st {};
    ASSERT_EQ(::stat((dir_ / name).c_str(), &st), 0) << name;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << name;
  }
  {
    auto learner = Make(o);
    ASSERT_TRUE(learner.ok()) << learner.status().ToString();
    const LearnerStats stats = (*learner)->stats();
    EXPECT_EQ(stats.buffer_rows, 32);
    EXPECT_EQ(stats.pending_rows, 18);         // the 8 checked rows and the 10 that came after
    ASSERT_TRUE((*learner)->AdaptNow().ok());  // the pending rows train after the restart
  }
  AdaptOptions wrong = o;
  wrong.buffer_key->fill(4);
  EXPECT_EQ(Make(wrong).status().code(), StatusCode::kDataLoss);
  std::string bytes = ReadFileToString(dir_ / "rows.bin").value();
  bytes[bytes.size() / 2] ^= 1;
  ASSERT_TRUE(WriteFileAtomic(dir_ / "rows.bin", bytes, 0600).ok());
  Status s = Make(o).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("edge.adapt_buffer_file"), std::string::npos) << s.ToString();
}

TEST_F(AdaptationTest, AFullInboxDropsInsteadOfWaiting) {
  AdaptOptions o = Options();
  o.inbox = 5;
  o.min_new = 5;
  o.window = 5;
  o.cpu_share = 1e-6;  // after one cycle the learner rests, so its inbox fills
  auto learner = Make(o);
  ASSERT_TRUE(learner.ok());
  Teach(**learner, 5);
  for (int i = 0; i < 200 && (*learner)->stats().cycles < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ((*learner)->stats().cycles, 1);  // the learner's own trigger
  Teach(**learner, 20, 1000);
  EXPECT_GE((*learner)->stats().dropped, 15);
}

TEST_F(AdaptationTest, AnswersThatDoNotFitTheModelAreDroppedNotTrusted) {
  auto learner = Make(Options());
  ASSERT_TRUE(learner.ok());
  const torch::Tensor images = testing::RandomImages(2, 4);
  Observation other_model;  // a cloud serving a 7-class model
  other_model.peer = "app";
  other_model.request_id = 1;
  other_model.image = images[0];
  other_model.teacher = torch::zeros({7});
  (*learner)->Observe(other_model);
  Observation wrong_image;
  wrong_image.peer = "app";
  wrong_image.request_id = 2;
  wrong_image.image = torch::zeros({3, 5, 5});
  wrong_image.teacher = torch::zeros({10});
  (*learner)->Observe(wrong_image);
  EXPECT_EQ((*learner)->AdaptNow().code(), StatusCode::kFailedPrecondition);  // nothing kept
  EXPECT_EQ((*learner)->stats().dropped, 2);
  Teach(**learner, 8);
  EXPECT_TRUE((*learner)->AdaptNow().ok());  // and the learner still works
}

TEST_F(AdaptationTest, WaitingInputsAreBoundedInBytes) {
  // One 28x28 float image is 3,136 bytes: a budget of 4 images keeps 4 requests in the
  // feedback window and 4 labelled inputs in the inbox.
  AdaptOptions o = Options();
  o.max_bytes = 4 * 28 * 28 * 4;
  o.min_new = 4;
  o.window = 4;
  o.cpu_share = 1e-6;  // after its first cycle the learner rests: nothing drains the inbox
  auto learner = Make(o);
  ASSERT_TRUE(learner.ok());
  Teach(**learner, 4, 500);
  for (int i = 0; i < 200 && (*learner)->stats().cycles < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ((*learner)->stats().cycles, 1);
  const torch::Tensor images = testing::RandomImages(10, 3);
  for (int i = 0; i < 10; ++i) {
    Observation u;  // unlabelled: only the feedback window keeps it
    u.peer = "app";
    u.request_id = 100 + i;
    u.image = images[i];
    (*learner)->Observe(u);
  }
  EXPECT_FALSE((*learner)->Feedback("app", {105, 1}).accepted);  // left the window
  EXPECT_TRUE((*learner)->Feedback("app", {106, 1}).accepted);
  Teach(**learner, 10, 1000);  // the inbox takes 3 (the feedback holds the 4th slot)
  EXPECT_EQ((*learner)->stats().dropped, 7);
}

TEST_F(AdaptationTest, RejectsBadOptionsAndBundlesWithoutExits) {
  const auto rejects = [&](const std::function<void(AdaptOptions&)>& f, const char* key) {
    AdaptOptions o = Options();
    f(o);
    Status s = Make(o).status();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << key;
    EXPECT_NE(s.message().find(key), std::string::npos) << s.ToString();
  };
  rejects([](AdaptOptions& o) { o.scope = "tail"; }, "edge.adapt_scope");
  rejects([](AdaptOptions& o) { o.cpu_share = 0; }, "edge.adapt_cpu_share");
  rejects([](AdaptOptions& o) { o.cpu_share = 1.5; }, "edge.adapt_cpu_share");
  rejects([](AdaptOptions& o) { o.lr = -1; }, "edge.adapt_lr");
  rejects([](AdaptOptions& o) { o.min_new = 0; }, "edge.adapt_min_new");
  rejects([](AdaptOptions& o) { o.pseudo_margin = 2; }, "edge.adapt_pseudo_margin");
  rejects([](AdaptOptions& o) { o.max_bytes = 0; }, "edge.adapt_max_mb");
  rejects([](AdaptOptions& o) { o.strategy.strategy = "gem"; }, "gem");
  rejects([](AdaptOptions& o) { o.buffer_key = crypto::Key256{}; }, "edge.adapt_buffer_key_file");
  // A bundle whose model has no early exit has nothing to adapt.
  split::VisionSplitModel model;
  model.spec = split::VisionModelSpec::TinySplit();
  model.spec.exits.clear();
  model.net = split::SplitVisionNet(model.spec);
  torch::NoGradGuard no_grad;
  auto head = split::Int8Head::Quantize(*model.net, model.head_end(), testing::RandomImages(8, 1));
  ASSERT_TRUE(head.ok());
  model.int8_head = std::make_shared<split::Int8Head>(std::move(head).value());
  model.wire_quant =
      split::RangesToQuantParams(torch::zeros({2}), torch::ones({2}), wire::DType::kUInt4);
  auto policy = split::ExitPolicy::Create(split::ExitCriterion::kMaxSoftmax, {});
  ASSERT_TRUE(policy.ok());
  model.exit_policy = *policy;
  ASSERT_TRUE(split::WriteVisionBundle(dir_ / "no-exit", model).ok());
  auto bundle = Bundle::Open(dir_ / "no-exit");
  ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
  Status s = EdgeLearner::Create(
                 Options(), *bundle, head_, [](std::unique_ptr<EdgeEngine>) {}, nullptr)
                 .status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("no early exit"), std::string::npos) << s.ToString();
}

TEST_F(AdaptationTest, ImportedBundleAdaptsItsExitsAndSendsTheBundlesWireBytes) {
  ExpectImportedExitsAdaptAndTheWireHolds();  // the bundle's int8 head serves unchanged
}

TEST_F(AdaptationTest, ImportedBundleAdaptsItsExitsOnTheFp32Head) {
  head_.int8 = false;
  ExpectImportedExitsAdaptAndTheWireHolds();
}

TEST_F(AdaptationTest, ScopeHeadIsRefusedForAnImportedBundle) {
  std::unique_ptr<Bundle> imported = ImportedBundle("imported");
  ASSERT_NE(imported, nullptr);
  AdaptOptions o = Options();
  o.scope = "head";
  Status s = MakeFor(*imported, o).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find("edge.adapt_scope"), std::string::npos) << s.ToString();
  o.scope = "exits";
  EXPECT_TRUE(MakeFor(*imported, o).ok());
}

TEST_F(AdaptationTest, RebaseOntoAnotherKindIsRefusedAndPausesUntilItsKindServesAgain) {
  std::unique_ptr<Bundle> imported = ImportedBundle("imported");
  ASSERT_NE(imported, nullptr);
  auto learner = Make(Options());  // vision-split
  ASSERT_TRUE(learner.ok()) << learner.status().ToString();
  Teach(**learner, 64);
  Status rebased = (*learner)->Rebase(*imported);
  EXPECT_EQ(rebased.code(), StatusCode::kFailedPrecondition) << rebased.ToString();
  EXPECT_NE(rebased.message().find("torchscript-split"), std::string::npos) << rebased.ToString();
  EXPECT_NE(rebased.message().find("vision-split"), std::string::npos) << rebased.ToString();
  // The imported version serves now: exits adapted on the old model must not replace it.
  Status paused = (*learner)->AdaptNow();
  EXPECT_EQ(paused.code(), StatusCode::kFailedPrecondition) << paused.ToString();
  EXPECT_NE(paused.message().find("torchscript-split"), std::string::npos) << paused.ToString();
  EXPECT_EQ(swaps_, 0);
  // Its own kind serves again: adaptation resumes on the rows it kept.
  ASSERT_TRUE((*learner)->Rebase(*bundle_).ok());
  Status resumed = (*learner)->AdaptNow();
  ASSERT_TRUE(resumed.ok()) << resumed.ToString();
  EXPECT_EQ(swaps_, 1);
  EXPECT_EQ(last_->model().imported(), nullptr);
}

TEST_F(AdaptationTest, ImportedLearnerRebasesOntoANewImportedVersionButNotOntoAnotherKind) {
  std::unique_ptr<Bundle> imported = ImportedBundle("imported");
  std::unique_ptr<Bundle> next = ImportedBundle("imported-v2");
  ASSERT_NE(imported, nullptr);
  ASSERT_NE(next, nullptr);
  auto learner = MakeFor(*imported, Options());
  ASSERT_TRUE(learner.ok()) << learner.status().ToString();
  Status refused = (*learner)->Rebase(*bundle_);  // vision-split, 10 classes, 1x28x28
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition) << refused.ToString();
  EXPECT_NE(refused.message().find("vision-split"), std::string::npos) << refused.ToString();
  Status accepted = (*learner)->Rebase(*next);
  ASSERT_TRUE(accepted.ok()) << accepted.ToString();
  TeachImported(**learner, 64);
  Status adapted = (*learner)->AdaptNow();
  ASSERT_TRUE(adapted.ok()) << adapted.ToString();
  EXPECT_EQ(swaps_, 1);
  ASSERT_NE(last_, nullptr);
  EXPECT_NE(last_->model().imported(), nullptr);
}

}  // namespace
}  // namespace cleave::edge

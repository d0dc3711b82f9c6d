// Update decoding refuses every malformed encoding with a clean error (never a crash), and the
// simulator reports the encoded bytes of compressed updates.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "federated/simulation.h"
#include "federated/update_compression.h"
#include "unit/federated/update_compression_test_helpers.h"

namespace cleave::federated {
namespace {

using namespace compression_testing;  // NOLINT(build/namespaces): the shared test helpers

// ---- Decoder rejections: every one is a clean error, never a crash.

class DecodeRejectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    global_ = RandomWeights(layout_, 1);
    trained_ = RandomWeights(layout_, 2);
    CompressionConfig topk = CompressionOf("topk");
    topk.topk_fraction = 0.01;  // k = 9
    int8_ = MustEncode(CompressionOf("int8"), global_, trained_, mask_);
    topk_ = MustEncode(topk, global_, trained_, mask_);
    none_ = MustEncode(CompressionOf("none"), global_, trained_, mask_);
  }
  Status Decode(const std::string& bytes) { return DecodeUpdate(bytes, layout_, mask_).status(); }
  void ExpectInvalid(const std::string& bytes, const std::string& needle) {
    const Status s = Decode(bytes);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
  }

  const WeightsLayout layout_ = TestLayout();
  const std::vector<bool> mask_ = AllTrainable(layout_);
  Weights global_, trained_;
  std::string int8_, topk_, none_;
};

TEST_F(DecodeRejectionTest, ValidEncodingsDecode) {
  EXPECT_TRUE(Decode(int8_).ok());
  EXPECT_TRUE(Decode(topk_).ok());
  EXPECT_TRUE(Decode(none_).ok());
}

TEST_F(DecodeRejectionTest, EveryTruncationAndTrailingBytes) {
  for (const std::string* bytes : {&int8_, &topk_, &none_}) {
    for (size_t len = 0; len < bytes->size(); ++len) {
      EXPECT_EQ(Decode(bytes->substr(0, len)).code(), StatusCode::kInvalidArgument) << len;
    }
    ExpectInvalid(*bytes + '\0', "trailing");
  }
  ExpectInvalid(topk_.substr(0, topk_.size() - 1), "truncated");
}

TEST_F(DecodeRejectionTest, BadMagicKindFlagsAndVersion) {
  std::string bad = int8_;
  bad[0] = 'X';
  ExpectInvalid(bad, "magic");
  bad = int8_;
  bad[5] = 7;
  ExpectInvalid(bad, "unknown kind");
  bad = int8_;
  bad[6] = 1;
  ExpectInvalid(bad, "flags");
  bad = int8_;
  bad[4] = 2;
  const Status s = Decode(bad);
  EXPECT_EQ(s.code(), StatusCode::kVersionMismatch) << s.ToString();
  EXPECT_NE(s.message().find("version 2"), std::string::npos);
}

TEST_F(DecodeRejectionTest, CountMismatches) {
  std::string bad = int8_;
  PutU32(bad, 8, 2);  // entries
  ExpectInvalid(bad, "entries");
  bad = int8_;
  PutU32(bad, 12, 862);  // total values
  ExpectInvalid(bad, "values");
  bad = int8_;
  PutU32(bad, kHeader + 4, 255);  // the second entry's count
  ExpectInvalid(bad, "entry 1");
  bad = topk_;
  PutU32(bad, PayloadStart(layout_), 864);  // k > n
  ExpectInvalid(bad, "exceeds");
  bad = topk_;
  PutU32(bad, PayloadStart(layout_), 8);  // k one short of what follows
  ExpectInvalid(bad, "trailing");
}

TEST_F(DecodeRejectionTest, TopKIndexOutOfRangeOrNotIncreasing) {
  const size_t indices = PayloadStart(layout_) + 4;
  std::string bad = topk_;
  PutU32(bad, indices + 4 * 8, 863);  // the last index, one past the end
  ExpectInvalid(bad, "out of range");
  bad = topk_;
  PutU32(bad, indices + 4 * 8, 0xffffffffu);
  ExpectInvalid(bad, "out of range");
  bad = topk_;
  std::memcpy(&bad[indices + 4], &bad[indices], 4);  // a duplicate
  ExpectInvalid(bad, "increasing");
}

TEST_F(DecodeRejectionTest, NonFiniteOrOversizeScalesAndValues) {
  const size_t scales = PayloadStart(layout_) + 4;
  for (float bad_scale :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), -1.0f,
        std::numeric_limits<float>::max()}) {
    std::string bad = int8_;
    PutF32(bad, scales + 4, bad_scale);
    ExpectInvalid(bad, "scale");
  }
  std::string bad = int8_;
  PutU32(bad, PayloadStart(layout_), 0);  // chunk size
  ExpectInvalid(bad, "chunk");
  bad = int8_;
  bad[bad.size() - 1] = static_cast<char>(0x80);  // -128
  ExpectInvalid(bad, "-128");
  bad = topk_;
  PutF32(bad, bad.size() - 4, std::numeric_limits<float>::quiet_NaN());
  ExpectInvalid(bad, "non-finite");
  bad = none_;
  PutF32(bad, PayloadStart(layout_), std::numeric_limits<float>::infinity());
  ExpectInvalid(bad, "non-finite");
}

TEST_F(DecodeRejectionTest, RandomCorruptionNeverCrashes) {
  std::mt19937 rng(7);
  int decoded = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bytes = iter % 3 == 0 ? int8_ : iter % 3 == 1 ? topk_ : none_;
    const int flips = 1 + rng() % 4;
    for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    if (rng() % 4 == 0) bytes.resize(rng() % (bytes.size() + 8), '\x01');
    auto r = DecodeUpdate(bytes, layout_, mask_);
    if (!r.ok()) continue;
    ++decoded;
    for (const auto& t : *r) EXPECT_TRUE(torch::isfinite(t).all().item<bool>());
  }
  EXPECT_GT(decoded, 0);  // payload flips that stay valid still decode
}

// ---- The simulator counts the encoded bytes

SimData SyntheticData() {
  torch::manual_seed(11);
  SimData d;
  d.train = split::LabeledImages{torch::rand({200, 1, 28, 28}),
                                 torch::arange(200, torch::kLong).remainder(10)};
  d.test = split::LabeledImages{torch::rand({50, 1, 28, 28}),
                                torch::arange(50, torch::kLong).remainder(10)};
  for (int i = 0; i < 200; ++i) d.train_labels.push_back(static_cast<uint8_t>(i % 10));
  return d;
}

SimOptions SmallSim(const std::string& kind) {
  SimOptions o;
  o.model = "tiny_split";
  o.num_clients = 10;
  o.rounds = 2;
  o.engine.fraction = 0.4;
  o.engine.min_clients = 2;
  o.engine.fit.batch_size = 16;
  o.workers = 2;
  o.progress_out = nullptr;
  o.compression.kind = kind;
  return o;
}

TEST(SimulationCompressionTest, Int8AndTopKReportTheEncodedBytes) {
  const SimData data = SyntheticData();
  auto none = RunSimulation(SmallSim("none"), data);
  auto int8 = RunSimulation(SmallSim("int8"), data);
  SimOptions topk_options = SmallSim("topk");
  topk_options.compression.topk_fraction = 0.01;
  auto topk = RunSimulation(topk_options, data);
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  ASSERT_TRUE(int8.ok()) << int8.status().ToString();
  ASSERT_TRUE(topk.ok()) << topk.status().ToString();
  ASSERT_EQ(int8->history.size(), 2u);
  for (size_t r = 0; r < 2; ++r) {
    const auto& dense = none->history[r];
    const auto& q = int8->history[r];
    const auto& sparse = topk->history[r];
    ASSERT_EQ(q.succeeded, dense.succeeded);
    ASSERT_GT(q.succeeded, 0);
    const double dense_bytes = dense.extra.at("bytes_up").get<double>();
    EXPECT_EQ(q.extra.at("compression").at("dense_bytes_up").get<double>(), dense_bytes);
    EXPECT_LT(q.extra.at("bytes_up").get<double>(), 0.30 * dense_bytes);
    EXPECT_LT(sparse.extra.at("bytes_up").get<double>(), 0.05 * dense_bytes);
    EXPECT_EQ(q.extra.at("compression").at("kind"), "int8");
    EXPECT_EQ(dense.extra.at("compression").at("kind"), "none");
    EXPECT_TRUE(q.applied);
  }
}

TEST(SimulationCompressionTest, UnsupportedCombinationsAreRefusedUpFront) {
  SimOptions o = SmallSim("topk");
  o.strategy.name = "fedmedian";
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o = SmallSim("topk");
  o.engine.secure.enabled = true;
  EXPECT_EQ(o.Validate().code(), StatusCode::kFailedPrecondition);
  o = SmallSim("int8");
  o.compression.topk_fraction = 0;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave::federated

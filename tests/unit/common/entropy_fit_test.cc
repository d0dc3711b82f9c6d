#include "common/entropy_fit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "unit/common/entropy_test_util.h"

namespace cleave::entropy_testing {
namespace {

using ::testing::HasSubstr;

// ---- Fitting ----

TEST(EntropyCoderFitTest, TablesAreSmoothedAndSumToTheTotal) {
  // Channel 0 only ever shows symbol 5; channel 1 shows 0..7 (symbol 3 52 times in 400) and
  // never 8..15.
  std::vector<uint8_t> samples;
  for (int n = 0; n < 100; ++n) {
    for (int i = 0; i < 4; ++i) samples.push_back(5);
    for (int i = 0; i < 4; ++i) samples.push_back(static_cast<uint8_t>((n + i) % 8));
  }
  auto options = FitOptions(16, 2, 8);
  const EntropyModel model = FitOrFail(samples, options, ContextKind::kPerChannel);
  for (uint32_t t = 0; t < 2; ++t) {
    uint32_t sum = 0;
    for (uint32_t s = 0; s < 16; ++s) {
      EXPECT_GE(model.Frequency(t, s), 1u);
      sum += model.Frequency(t, s);
    }
    EXPECT_EQ(sum, 4096u);
  }
  // 400 fives + 0.5 each: p(5) = 400.5 / 408.
  EXPECT_NEAR(model.Frequency(0, 5), 4096 * 400.5 / 408, 2);
  EXPECT_NEAR(model.Frequency(0, 0), 4096 * 0.5 / 408, 1);
  EXPECT_NEAR(model.Frequency(1, 3), 4096 * 52.5 / 408, 1);
  EXPECT_NEAR(model.Frequency(1, 12), 4096 * 0.5 / 408, 1);
  EXPECT_EQ(model.TableOf(3), 0u);
  EXPECT_EQ(model.TableOf(4), 1u);

  options.smoothing = 0;  // no smoothing: unseen symbols still get the minimum of 1
  const EntropyModel sharp = FitOrFail(samples, options, ContextKind::kPerChannel);
  EXPECT_EQ(sharp.Frequency(0, 5), 4096u - 15);
  EXPECT_EQ(sharp.Frequency(1, 12), 1u);
}

TEST(EntropyCoderFitTest, NoSamplesGiveUniformTables) {
  const EntropyModel model = FitOrFail({}, FitOptions(16, 2, 98), ContextKind::kPerElement);
  EXPECT_EQ(model.table_count(), 98u);
  EXPECT_EQ(model.Frequencies(), std::vector<uint32_t>(98 * 16, 256));
}

TEST(EntropyCoderFitTest, RejectsBadInput) {
  const auto options = FitOptions(16, 2, 98);
  ExpectEntropyInvalid(
      FitEntropyModel(std::vector<uint8_t>(97, 0), options, ContextKind::kShared).status(),
      "97 symbols are not a whole number of samples of 98");
  std::vector<uint8_t> big(98, 1);
  big[40] = 16;
  ExpectEntropyInvalid(FitEntropyModel(big, options, ContextKind::kShared).status(),
                       "symbol 16 at index 40 is outside the alphabet of 16");
  auto negative = options;
  negative.smoothing = -1;
  ExpectEntropyInvalid(FitEntropyModel({}, negative, ContextKind::kShared).status(),
                       "smoothing must be finite and >= 0");
  negative.smoothing = std::nan("");
  ExpectEntropyInvalid(FitEntropyModel({}, negative, ContextKind::kShared).status(),
                       "smoothing must be finite and >= 0");
  ExpectEntropyInvalid(FitEntropyModel({}, FitOptions(16, 2, 0), ContextKind::kShared).status(),
                       "at least one channel and element");
  ExpectEntropyInvalid(ChooseEntropyModel(std::vector<uint8_t>(98, 0), options).status(),
                       "needs at least 2 samples, got 1");
  auto every = options;
  every.holdout_every = 1;
  ExpectEntropyInvalid(ChooseEntropyModel(std::vector<uint8_t>(980, 0), every).status(),
                       "holdout_every must be at least 2");
}

// Channels differ, positions within a channel do not, and there are few samples: a table
// per element (or per element and prediction bucket) would be fitted to ~16 symbols and
// overfit.
TEST(EntropyCoderFitTest, ScarceDataChoosesPerChannelTables) {
  auto choice = ChooseEntropyModel(BottleneckSamples(20, 40),
                                   FitOptions(16, kBottleneckChannels, kBottleneckElements));
  ASSERT_TRUE(choice.ok()) << choice.status().ToString();
  EXPECT_EQ(choice->model.kind(), ContextKind::kPerChannel);
  ASSERT_EQ(choice->candidates.size(), 4u);
  EXPECT_EQ(choice->candidates[0].kind, ContextKind::kShared);
  EXPECT_EQ(choice->candidates[1].kind, ContextKind::kPerChannel);
  EXPECT_EQ(choice->candidates[2].kind, ContextKind::kPerElement);
  EXPECT_EQ(choice->candidates[3].kind, ContextKind::kPerElementPredicted);
  EXPECT_LT(choice->candidates[1].heldout_bytes, choice->candidates[0].heldout_bytes);
  EXPECT_LT(choice->candidates[1].heldout_bytes, choice->candidates[2].heldout_bytes);
  EXPECT_LT(choice->candidates[1].heldout_bytes, choice->candidates[3].heldout_bytes);
  EXPECT_EQ(choice->training_samples, 16u);
  EXPECT_EQ(choice->heldout_samples, 4u);
  for (const auto& c : choice->candidates) {
    std::printf("%s: %llu held-out bytes (%.0f bits ideal)\n", ContextKindName(c.kind),
                static_cast<unsigned long long>(c.heldout_bytes), c.heldout_bits);
  }
}

// Every position has its own peak and there is plenty of data: per-element tables win.
TEST(EntropyCoderFitTest, PositionalDataChoosesPerElementTables) {
  std::vector<uint8_t> samples;
  for (uint32_t n = 0; n < 1000; ++n) {
    for (uint32_t i = 0; i < kBottleneckElements; ++i) {
      const auto one = SkewedSymbols(1, 16, n * kBottleneckElements + i, (i * 5) % 16);
      samples.push_back(one[0]);
    }
  }
  auto choice =
      ChooseEntropyModel(samples, FitOptions(16, kBottleneckChannels, kBottleneckElements));
  ASSERT_TRUE(choice.ok()) << choice.status().ToString();
  EXPECT_EQ(choice->model.kind(), ContextKind::kPerElement);
  EXPECT_EQ(choice->heldout_samples, 200u);
  // The chosen model is refitted on every sample.
  EXPECT_EQ(choice->model.Serialize(),
            FitOrFail(samples, FitOptions(16, kBottleneckChannels, kBottleneckElements),
                      ContextKind::kPerElement)
                .Serialize());
}

TEST(EntropyCoderFitTest, ChoiceSkipsGranularitiesThatAddNothingOrDoNotFit) {
  // One channel: per-channel would equal shared. 256 symbols x 8192 elements: per-element
  // is over the size limit.
  auto choice = ChooseEntropyModel(UniformSymbols(8192 * 3, 256, 1), FitOptions(256, 1, 8192));
  ASSERT_TRUE(choice.ok()) << choice.status().ToString();
  ASSERT_EQ(choice->candidates.size(), 1u);
  EXPECT_EQ(choice->model.kind(), ContextKind::kShared);
  EXPECT_EQ(choice->heldout_samples, 1u);  // fewer samples than holdout_every: the last one
}

TEST(EntropyCoderFitTest, ChoiceSkipsPerChannelTablesThatDoNotFit) {
  // 8192 channels of one element: per-channel (and per-element) tables of 256 symbols are
  // over the size limit, so only the shared table is tried.
  auto choice = ChooseEntropyModel(UniformSymbols(8192 * 2, 256, 2), FitOptions(256, 8192, 8192));
  ASSERT_TRUE(choice.ok()) << choice.status().ToString();
  ASSERT_EQ(choice->candidates.size(), 1u);
  EXPECT_EQ(choice->model.kind(), ContextKind::kShared);
}

}  // namespace
}  // namespace cleave::entropy_testing

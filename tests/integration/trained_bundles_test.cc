// The shared set-up of the integration suites: trains (or finds up to date) the bundles
// that several test processes reuse (testing/trained_bundles.h). ctest runs these first as
// fixture set-up tests (FIXTURES_SETUP in tests/CMakeLists.txt), so the suites that need a
// trained bundle never train one themselves.
#include "testing/trained_bundles.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "common/file_util.h"

namespace cleave::testing {
namespace {

namespace fs = std::filesystem;

// Trains `spec` if needed and checks the result is a bundle that a second call reuses as it
// is (no retraining, the same files).
void ExpectTrainedOnce(const TrainedBundleSpec& spec) {
  auto bundle = EnsureTrainedBundle(spec);
  ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
  const fs::path manifest = *bundle / "manifest.json";
  ASSERT_TRUE(fs::exists(manifest)) << manifest;
  const auto written = fs::last_write_time(manifest);
  auto again = EnsureTrainedBundle(spec);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(*again, *bundle);
  EXPECT_EQ(fs::last_write_time(manifest), written) << "the bundle was trained again";
}

TEST(TrainedBundles, VisionQuick) { ExpectTrainedOnce(VisionQuickBundle()); }

TEST(TrainedBundles, TinyLm) { ExpectTrainedOnce(TinyLmBundle()); }

// A training that fails is an error naming its log, and leaves nothing that a later call
// would take for a trained bundle.
TEST(TrainedBundlesTest, FailedTrainingIsAnErrorNamingItsLog) {
  const TrainedBundleSpec spec = {
      "failing-trainer", "bundle", {"train", "--no-such-option"}, 60 * 1000};
  auto bundle = EnsureTrainedBundle(spec);
  ASSERT_FALSE(bundle.ok());
  const fs::path dir = fs::path(CLEAVE_FIXTURE_DIR) / spec.name;
  EXPECT_NE(bundle.status().message().find((dir / "train.log").string()), std::string::npos)
      << bundle.status().ToString();
  EXPECT_FALSE(fs::exists(dir / "trained-by"));
  EXPECT_FALSE(fs::exists(dir / "bundle" / "manifest.json"));
  // Failing again (not reusing anything) is the same error.
  auto again = EnsureTrainedBundle(spec);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), bundle.status().code());
}

}  // namespace
}  // namespace cleave::testing

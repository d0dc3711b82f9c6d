// The edge ModelRepository: start-up serves the highest version; a newer good version is
// loaded warm and handed over; a corrupt, unsigned (with a trusted key) or failing version is
// refused, remembered as bad until its directory changes, and the current version keeps
// serving; with nothing new nothing loads.
#include "edge/model_repository.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <vector>

#include "common/signing.h"
#include "split/bundle.h"
#include "testing/bundle_repository.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;

split::EdgeModel::Options HeadOptions() {
  split::EdgeModel::Options options;
  options.int8_engine = "reference";  // no engine measurement in unit tests
  return options;
}

class EdgeModelRepositoryTest : public testing::BundleRepositoryTest {
 protected:
  // The real loader, counting its calls and remembering whether it was asked to warm up.
  ModelRepository::Loader CountingLoader() {
    return [this](const fs::path& dir, bool warm) {
      ++loads_;
      last_warm_ = warm;
      return LoadEdgeEngine(dir, HeadOptions(), warm);
    };
  }

  int loads_ = 0;
  bool last_warm_ = false;
};

TEST_F(EdgeModelRepositoryTest, LoadFirstServesTheHighestVersionUnwarmed) {
  Publish(1);
  Publish(4);
  fs::copy(*source_, root_ / ".tmp-9", fs::copy_options::recursive);  // half published
  fs::create_directories(root_ / "latest");
  ModelRepository repository(root_, HeadOptions(), 0, CountingLoader());
  Result<ServableEngine> first = repository.LoadFirst();
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->version, 4u);
  EXPECT_EQ(first->dir, root_ / "4");
  ASSERT_NE(first->engine, nullptr);
  EXPECT_EQ(first->engine->image_size(), 28);
  EXPECT_FALSE(first->bundle.manifest_sha256().empty());
  EXPECT_FALSE(last_warm_) << "the server warms the first engine itself";
  EXPECT_EQ(repository.current_version(), 4u);

  // Nothing newer: no reload.
  auto again = repository.Poll();
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(*again, nullptr);
  EXPECT_EQ(loads_, 1);
}

TEST_F(EdgeModelRepositoryTest, EmptyMissingAndBrokenFirstVersionsStopStartUp) {
  ModelRepository empty(root_, HeadOptions());
  auto nothing = empty.LoadFirst();
  ASSERT_FALSE(nothing.ok());
  EXPECT_EQ(nothing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(nothing.status().message().find("holds no version directory"), std::string::npos)
      << nothing.status().ToString();

  ModelRepository missing(root_ / "nope", HeadOptions());
  auto no_root = missing.LoadFirst();
  ASSERT_FALSE(no_root.ok());
  EXPECT_EQ(no_root.status().code(), StatusCode::kNotFound);

  const fs::path one = Publish(1);
  std::ofstream(one / split::kHeadFp32File, std::ios::app) << "tampered";
  ModelRepository broken(root_, HeadOptions());
  auto refused = broken.LoadFirst();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kDataLoss) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("model version 1"), std::string::npos)
      << refused.status().ToString();
  EXPECT_EQ(broken.current_version(), 0u);
}

TEST_F(EdgeModelRepositoryTest, GoodNewVersionIsLoadedWarmOnce) {
  Publish(1);
  ModelRepository repository(root_, HeadOptions(), 1, CountingLoader());
  ASSERT_TRUE(repository.LoadFirst().ok());
  Publish(2);
  auto next = repository.Poll();
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  ASSERT_NE(*next, nullptr);
  EXPECT_EQ((*next)->version, 2u);
  ASSERT_NE((*next)->engine, nullptr);
  EXPECT_TRUE(last_warm_) << "a version that replaces a serving one is warmed first";
  EXPECT_EQ(repository.current_version(), 2u);
  EXPECT_FALSE(repository.IsBad(2));

  auto unchanged = repository.Poll();
  ASSERT_TRUE(unchanged.ok());
  EXPECT_EQ(*unchanged, nullptr);
  EXPECT_EQ(loads_, 2);
}

TEST_F(EdgeModelRepositoryTest, CorruptVersionIsRefusedAndTheOldOneKeepsServing) {
  Publish(1);
  ModelRepository repository(root_, HeadOptions(), 0, CountingLoader());
  ASSERT_TRUE(repository.LoadFirst().ok());

  const fs::path two = Publish(2);
  std::ofstream(two / split::kHeadFp32File, std::ios::app) << "tampered";
  auto refused = repository.Poll();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kDataLoss) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("still serving version 1"), std::string::npos)
      << refused.status().ToString();
  EXPECT_EQ(repository.current_version(), 1u);
  EXPECT_TRUE(repository.IsBad(2));

  // Remembered: the unchanged bad version is not loaded again.
  const int loads = loads_;
  auto skipped = repository.Poll();
  ASSERT_TRUE(skipped.ok());
  EXPECT_EQ(*skipped, nullptr);
  EXPECT_EQ(loads_, loads);

  // A fixed version published under the same number is retried and served.
  fs::remove_all(two);
  Publish(2);
  auto fixed = repository.Poll();
  ASSERT_TRUE(fixed.ok()) << fixed.status().ToString();
  ASSERT_NE(*fixed, nullptr);
  EXPECT_EQ((*fixed)->version, 2u);
  EXPECT_FALSE(repository.IsBad(2));
}

TEST_F(EdgeModelRepositoryTest, UnsignedVersionIsRefusedWhenAKeyIsTrusted) {
  auto keys = signing::GenerateEd25519();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  const fs::path one = Publish(1);
  ASSERT_TRUE(SignBundle(one, keys->secret_pem).ok());
  ASSERT_TRUE(SetTrustedBundleKey(keys->public_pem).ok());

  ModelRepository repository(root_, HeadOptions());
  ASSERT_TRUE(repository.LoadFirst().ok());

  Publish(2);  // not signed
  auto refused = repository.Poll();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition)
      << refused.status().ToString();
  EXPECT_EQ(repository.current_version(), 1u);
  EXPECT_TRUE(repository.IsBad(2));
}

TEST_F(EdgeModelRepositoryTest, WarmUpFailureAndAnEmptyLoadKeepTheCurrentVersion) {
  Publish(1);
  int mode = 0;  // 0: real loader, 1: warm-up fails, 2: the loader returns no engine
  ModelRepository repository(root_, HeadOptions(), 0,
                             [&mode](const fs::path& dir, bool warm) -> Result<ServableEngine> {
                               if (mode == 1) return Status::Internal("simulated warm-up failure");
                               if (mode == 2) return ServableEngine();
                               return LoadEdgeEngine(dir, HeadOptions(), warm);
                             });
  ASSERT_TRUE(repository.LoadFirst().ok());
  mode = 1;
  Publish(2);
  auto failed = repository.Poll();
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("simulated warm-up failure"), std::string::npos);
  EXPECT_EQ(repository.current_version(), 1u);
  EXPECT_TRUE(repository.IsBad(2));

  mode = 2;
  Publish(3);
  auto empty = repository.Poll();
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), StatusCode::kInternal) << empty.status().ToString();
  EXPECT_EQ(repository.current_version(), 1u);
  EXPECT_TRUE(repository.IsBad(3));
}

TEST_F(EdgeModelRepositoryTest, PollerHandsEachNewVersionToItsCallback) {
  Publish(1);
  ModelRepository repository(root_, HeadOptions());
  ASSERT_TRUE(repository.LoadFirst().ok());
  std::mutex mu;
  std::condition_variable arrived;
  std::vector<uint64_t> versions;
  {
    RepositoryPoller poller(repository, 10, [&](std::unique_ptr<ServableEngine> next) {
      std::lock_guard<std::mutex> lock(mu);
      versions.push_back(next->version);
      arrived.notify_all();
    });
    Publish(2);
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(arrived.wait_for(lock, std::chrono::seconds(30),
                                 [&versions] { return !versions.empty(); }));
  }  // the poller stops and joins here
  EXPECT_EQ(versions, (std::vector<uint64_t>{2}));
  EXPECT_EQ(repository.current_version(), 2u);
}

}  // namespace
}  // namespace cleave::edge

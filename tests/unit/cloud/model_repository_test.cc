// ModelRepository: the highest numeric version is served and junk names are ignored; tampered,
// unsigned (with a trusted key) and failing versions are refused, remembered as bad until
// their directory changes, and the current version stays current (rollback).
#include "cloud/model_repository.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/signing.h"
#include "split/bundle.h"
#include "testing/bundle_repository.h"

namespace cleave::cloud {
namespace {

namespace fs = std::filesystem;

class ModelRepositoryTest : public testing::BundleRepositoryTest {
 protected:
  // The real loader, counting its calls.
  ModelRepository::Loader CountingLoader() {
    return [this](const fs::path& dir) {
      ++loads_;
      return LoadWarmCloudModels(dir, 1);
    };
  }

  int loads_ = 0;
};

TEST_F(ModelRepositoryTest, ScanPicksTheHighestNumericVersionAndIgnoresJunk) {
  Publish(1);
  Publish(3);
  fs::copy(*source_, root_ / ".tmp-9", fs::copy_options::recursive);  // half published
  fs::copy(*source_, root_ / "12.partial", fs::copy_options::recursive);
  fs::create_directories(root_ / "latest");
  fs::create_directories(root_ / "-4");
  std::ofstream(root_ / "7") << "a file, not a version directory";

  ModelRepository repository(root_, 2, CountingLoader());
  auto versions = repository.ListVersions();
  ASSERT_TRUE(versions.ok()) << versions.status().ToString();
  EXPECT_EQ(*versions, (std::vector<uint64_t>{1, 3}));

  auto loaded = repository.Poll();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_NE(*loaded, nullptr);
  EXPECT_EQ((*loaded)->version, 3u);
  EXPECT_EQ((*loaded)->dir, root_ / "3");
  EXPECT_EQ((*loaded)->models.size(), 1u);
  EXPECT_FALSE((*loaded)->manifest_sha256.empty());
  EXPECT_EQ(repository.current_version(), 3u);

  // Nothing newer: nothing loads.
  auto again = repository.Poll();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, nullptr);
  EXPECT_EQ(loads_, 1);
}

TEST_F(ModelRepositoryTest, DefaultLoaderMakesOneWarmCopyPerWorker) {
  Publish(5);
  ModelRepository repository(root_, 3);
  auto loaded = repository.Poll();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_NE(*loaded, nullptr);
  ASSERT_EQ((*loaded)->models.size(), 3u);
  EXPECT_EQ((*loaded)->models[2]->model_name(), "fmnist");
}

TEST_F(ModelRepositoryTest, EmptyAndMissingRepositories) {
  ModelRepository empty(root_, 1);
  auto nothing = empty.Poll();
  ASSERT_TRUE(nothing.ok());
  EXPECT_EQ(*nothing, nullptr);
  EXPECT_EQ(empty.current_version(), 0u);

  ModelRepository missing(root_ / "nope", 1);
  auto error = missing.Poll();
  ASSERT_FALSE(error.ok());
  EXPECT_EQ(error.status().code(), StatusCode::kNotFound);
}

TEST_F(ModelRepositoryTest, TamperedVersionIsRefusedUntilItsDirectoryChanges) {
  Publish(1);
  ModelRepository repository(root_, 1, CountingLoader());
  ASSERT_TRUE(repository.Poll().ok());
  ASSERT_EQ(repository.current_version(), 1u);

  const fs::path two = Publish(2);
  std::ofstream(two / "tail_fp32.pt", std::ios::app) << "tampered";
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

TEST_F(ModelRepositoryTest, WarmUpFailureKeepsTheCurrentVersion) {
  Publish(1);
  bool fail = false;
  ModelRepository repository(root_, 1, [&fail](const fs::path& dir) {
    if (fail) {
      return Result<std::vector<std::unique_ptr<split::CloudModel>>>(
          Status::Internal("warm-up: simulated failure"));
    }
    return LoadWarmCloudModels(dir, 1);
  });
  ASSERT_TRUE(repository.Poll().ok());
  fail = true;
  Publish(2);
  auto refused = repository.Poll();
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("simulated failure"), std::string::npos);
  EXPECT_EQ(repository.current_version(), 1u);
  EXPECT_TRUE(repository.IsBad(2));
}

TEST_F(ModelRepositoryTest, NonVisionBundleIsRefused) {
  BundleWriter writer(root_ / "1");
  ASSERT_TRUE(writer.AddFile("notes.txt", "hello").ok());
  ASSERT_TRUE(writer.Commit("lm-split", nlohmann::json::object()).ok());
  ModelRepository repository(root_, 1);
  auto refused = repository.Poll();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("vision-split"), std::string::npos);
}

TEST_F(ModelRepositoryTest, UnsignedVersionIsRefusedWhenAKeyIsTrusted) {
  auto keys = signing::GenerateEd25519();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  const fs::path one = Publish(1);
  ASSERT_TRUE(SignBundle(one, keys->secret_pem).ok());
  ASSERT_TRUE(SetTrustedBundleKey(keys->public_pem).ok());

  ModelRepository repository(root_, 1);
  auto signed_version = repository.Poll();
  ASSERT_TRUE(signed_version.ok()) << signed_version.status().ToString();
  ASSERT_NE(*signed_version, nullptr);

  Publish(2);  // not signed
  auto refused = repository.Poll();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition)
      << refused.status().ToString();
  EXPECT_EQ(repository.current_version(), 1u);

  // Signed by another key: refused too.
  auto other = signing::GenerateEd25519();
  ASSERT_TRUE(other.ok());
  fs::remove_all(root_ / "3");
  const fs::path three = Publish(3);
  ASSERT_TRUE(SignBundle(three, other->secret_pem).ok());
  auto wrong_key = repository.Poll();
  ASSERT_FALSE(wrong_key.ok());
  EXPECT_EQ(wrong_key.status().code(), StatusCode::kDataLoss) << wrong_key.status().ToString();
  EXPECT_EQ(repository.current_version(), 1u);
}

}  // namespace
}  // namespace cleave::cloud

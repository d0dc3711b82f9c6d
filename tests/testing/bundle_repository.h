// Test support: a model repository root (common/version_directory.h: <root>/<version>/) that
// tests fill with the tiny bundle (testing/tiny_bundle.h), written once per suite and
// published the way operators should. Shared by the cloud and edge ModelRepository tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "split/bundle.h"
#include "testing/tiny_bundle.h"

namespace cleave::testing {

class BundleRepositoryTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    source_ = new std::filesystem::path(TempPath("repo_source"));
    ASSERT_TRUE(WriteTinyBundle(*source_).ok());
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*source_);
    delete source_;
    source_ = nullptr;
  }
  void SetUp() override { std::filesystem::create_directories(root_); }
  void TearDown() override {
    std::filesystem::remove_all(root_);
    ASSERT_TRUE(SetTrustedBundleKey("").ok());
  }

  // Publishes the tiny bundle as `version` the way operators should: copy under a temporary
  // name, then rename into place. Returns the version's directory.
  std::filesystem::path Publish(uint64_t version) {
    const std::filesystem::path tmp = root_ / (".tmp-" + std::to_string(version));
    std::filesystem::copy(*source_, tmp, std::filesystem::copy_options::recursive);
    const std::filesystem::path dir = root_ / std::to_string(version);
    std::filesystem::rename(tmp, dir);
    return dir;
  }

  inline static std::filesystem::path* source_ = nullptr;  // the tiny bundle, per suite
  std::filesystem::path root_ = TempPath("repo");
};

}  // namespace cleave::testing

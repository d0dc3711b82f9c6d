// Integration: signed model bundles with real processes. `cleave keys generate` writes a
// signing key pair, `cleave bundle sign|verify` sign and check a bundle, and cleave-cloud
// configured with the public key serves only a bundle that key signed: an unsigned or
// tampered bundle is a start-up error naming the problem.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/file_util.h"
#include "edge/daemon_launcher.h"
#include "testing/tiny_bundle.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kBin = CLEAVE_BIN_DIR;

class SignedBundleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = cleave::testing::TempPath("signed_it");
    fs::create_directories(dir_);
    ASSERT_TRUE(cleave::testing::WriteTinyBundle(dir_ / "bundle").ok());
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  // Runs `cleave args...`; returns (exit code, output).
  std::pair<int, std::string> Cleave(const std::vector<std::string>& args,
                                     const std::string& name) {
    std::vector<std::string> argv = {(kBin / "cleave").string()};
    argv.insert(argv.end(), args.begin(), args.end());
    const fs::path log = dir_ / (name + ".log");
    auto child = ChildProcess::Spawn(argv, log.string());
    EXPECT_TRUE(child.ok()) << child.status().ToString();
    if (!child.ok()) return {-1, ""};
    auto code = (*child)->Wait(60000);
    return {code.ok() ? *code : -1, ReadFileToString(log).value_or("")};
  }
  Result<LaunchedDaemon> StartCloud(const std::string& name) {
    return LaunchDaemon(
        kBin / "cleave-cloud",
        {"--cloud.bundle", (dir_ / "bundle").string(), "--cloud.listen", "tcp://127.0.0.1:0",
         "--cloud.bundle_public_key", (dir_ / "signer.pub").string()},
        "cloud.ready_file", dir_, name, 30000);
  }
  fs::path dir_;
};

TEST_F(SignedBundleTest, OnlyBundlesSignedByTheTrustedKeyAreServed) {
  auto [code, out] = Cleave({"keys", "generate", "--out", (dir_ / "signer").string()}, "keys");
  ASSERT_EQ(code, 0) << out;
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "signer.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // Never overwritten without --force.
  std::tie(code, out) = Cleave({"keys", "generate", "--out", (dir_ / "signer").string()}, "keys2");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("--force"), std::string::npos) << out;
  ASSERT_EQ(Cleave({"keys", "generate", "--out", (dir_ / "other").string()}, "keys3").first, 0);

  // Unsigned: verify fails and the cloud refuses to start.
  std::tie(code, out) = Cleave({"bundle", "verify", "--bundle", (dir_ / "bundle").string(),
                                "--public-key", (dir_ / "signer.pub").string()},
                               "verify-unsigned");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("not signed"), std::string::npos) << out;
  auto refused = StartCloud("cloud-unsigned");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("not signed"), std::string::npos)
      << refused.status().ToString();

  // Signed: verify passes and the cloud serves.
  std::tie(code, out) = Cleave({"bundle", "sign", "--bundle", (dir_ / "bundle").string(), "--key",
                                (dir_ / "signer.key").string()},
                               "sign");
  ASSERT_EQ(code, 0) << out;
  std::tie(code, out) = Cleave({"bundle", "verify", "--bundle", (dir_ / "bundle").string(),
                                "--public-key", (dir_ / "signer.pub").string()},
                               "verify");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("verified_with"), std::string::npos) << out;
  auto served = StartCloud("cloud-signed");
  ASSERT_TRUE(served.ok()) << served.status().ToString();
  ASSERT_TRUE(served->process->Stop(5000).ok());

  // Another key's public half does not verify it.
  std::tie(code, out) = Cleave({"bundle", "verify", "--bundle", (dir_ / "bundle").string(),
                                "--public-key", (dir_ / "other.pub").string()},
                               "verify-other");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("does not verify"), std::string::npos) << out;

  // Tampered after signing (the manifest's thresholds): refused with a clear error.
  const fs::path manifest_path = dir_ / "bundle" / "manifest.json";
  json manifest = json::parse(*ReadFileToString(manifest_path));
  manifest["created_unix"] = manifest["created_unix"].get<int64_t>() + 1;
  ASSERT_TRUE(WriteFileAtomic(manifest_path, manifest.dump(2)).ok());
  auto tampered = StartCloud("cloud-tampered");
  ASSERT_FALSE(tampered.ok());
  EXPECT_NE(tampered.status().message().find("does not verify"), std::string::npos)
      << tampered.status().ToString();
}

}  // namespace
}  // namespace cleave::edge

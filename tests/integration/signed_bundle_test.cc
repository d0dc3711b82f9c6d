// Integration: signed model bundles with real processes. `cleave keys generate` writes a
// signing key pair, `cleave bundle sign|verify` sign and check a bundle, and cleave-cloud
// configured with the public key serves only a bundle that key signed: an unsigned or
// tampered bundle is a start-up error naming the problem.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/file_util.h"
#include "common/transport.h"
#include "edge/edge_client.h"
#include "testing/bin_dir.h"
#include "testing/tiny_bundle.h"
#include "tools/daemon_launcher.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using tools::LaunchDaemon;
using tools::LaunchedDaemon;

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

// A gateway's bundle updates: cleave-edge serves a model repository with a trusted key. A
// tampered version 2 is refused and version 1 keeps serving (rollback); a correctly signed
// version 3 is swapped in while the daemon serves. The versions differ in their calibrated
// exit threshold (1: everything exits at the edge; 3: nothing does, and with no cloud the
// answers are degraded), so each reply shows which version computed it.
TEST_F(SignedBundleTest, EdgeSwapsSignedVersionsAndRollsBackFromTamperedOnes) {
  ASSERT_EQ(Cleave({"keys", "generate", "--out", (dir_ / "signer").string()}, "keys").first, 0);
  auto signed_bundle = [&](const fs::path& dir, double threshold) {
    ASSERT_TRUE(cleave::testing::WriteTinyBundle(dir, threshold).ok());
    auto [code, out] = Cleave(
        {"bundle", "sign", "--bundle", dir.string(), "--key", (dir_ / "signer.key").string()},
        "sign-" + dir.filename().string());
    ASSERT_EQ(code, 0) << out;
  };
  const fs::path repo = dir_ / "repo";
  fs::create_directories(repo);
  signed_bundle(repo / "1", 0.0);
  auto edge = LaunchDaemon(
      kBin / "cleave-edge",
      {"serve", "--edge.model_repository", repo.string(), "--edge.bundle_public_key",
       (dir_ / "signer.pub").string(), "--edge.listen", "tcp://127.0.0.1:0", "--edge.cloud", "",
       "--edge.reload_interval_ms", "100", "--edge.int8_engine", "reference"},
      "edge.ready_file", dir_, "edge", 30000);
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  TransportContext context;
  auto client = EdgeClient::Connect(context, edge->endpoint);
  ASSERT_TRUE(client.ok());
  uint64_t next_id = 1;
  auto answer_source = [&]() {
    edge_api::ClassifyRequest r;
    r.request_id = next_id++;
    r.exit_threshold = -1.0f;  // the bundle's calibrated threshold
    r.width = r.height = 28;
    r.pixels.assign(28 * 28, static_cast<char>(40));
    auto outcomes = (*client)->Run({r}, 1, 5000);
    EXPECT_TRUE(outcomes.ok() && outcomes->size() == 1 && (*outcomes)[0].answered);
    if (!outcomes.ok() || outcomes->empty() || !(*outcomes)[0].answered) {
      return edge_api::AnswerSource::kError;
    }
    return (*outcomes)[0].reply.source;
  };
  auto wait_for_log = [&](const std::string& needle) {
    for (int i = 0; i < 300; ++i) {
      if (ReadFileToString(edge->log_path).value_or("").find(needle) != std::string::npos) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  };
  EXPECT_EQ(answer_source(), edge_api::AnswerSource::kEdgeExit);

  // Version 2: signed, then tampered with, then published by renaming into place.
  signed_bundle(dir_ / ".tmp-2", 1.0);
  const fs::path manifest_path = dir_ / ".tmp-2" / "manifest.json";
  json manifest = json::parse(*ReadFileToString(manifest_path));
  manifest["created_unix"] = manifest["created_unix"].get<int64_t>() + 1;
  ASSERT_TRUE(WriteFileAtomic(manifest_path, manifest.dump(2)).ok());
  fs::rename(dir_ / ".tmp-2", repo / "2");
  ASSERT_TRUE(wait_for_log("model version 2 refused; still serving version 1"))
      << ReadFileToString(edge->log_path).value_or("");
  EXPECT_NE(ReadFileToString(edge->log_path)->find("does not verify"), std::string::npos);
  EXPECT_EQ(answer_source(), edge_api::AnswerSource::kEdgeExit) << "version 1 still serves";

  // Version 3: correctly signed; swapped in without a restart.
  signed_bundle(dir_ / ".tmp-3", 1.0);
  fs::rename(dir_ / ".tmp-3", repo / "3");
  ASSERT_TRUE(wait_for_log("model repository: loading version 3"))
      << ReadFileToString(edge->log_path).value_or("");
  // The swap happens at the serving loop's next turn: the next request starts one.
  edge_api::AnswerSource source = edge_api::AnswerSource::kEdgeExit;
  for (int i = 0; i < 50 && source == edge_api::AnswerSource::kEdgeExit; ++i) {
    source = answer_source();
    if (source == edge_api::AnswerSource::kEdgeExit) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  EXPECT_EQ(source, edge_api::AnswerSource::kDegraded) << "version 3 sends everything away";
  EXPECT_TRUE(wait_for_log("now serving model version 3"));
  EXPECT_EQ(answer_source(), edge_api::AnswerSource::kDegraded);
  ASSERT_TRUE(edge->process->Stop(5000).ok());
}

}  // namespace
}  // namespace cleave::edge

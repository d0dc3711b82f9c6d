#include "split/bundle.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "common/signing.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class BundleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("cleave_test_bundle_" + UniqueSuffix());
    ASSERT_TRUE(fs::create_directories(root_));
    dir_ = root_ / "model.bundle";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  // Commits a small two-file bundle at dir_.
  void WriteSample(const std::string& head = "head-weights", const std::string& tail = "tail") {
    BundleWriter writer(dir_);
    ASSERT_TRUE(writer.AddFile("head.pt", head).ok());
    ASSERT_TRUE(writer.AddFile("tail.pt", tail).ok());
    Status s = writer.Commit("vision-split", {{"split_point", 3}, {"exits", {0.8, 0.9}}});
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  json ReadManifest() {
    return json::parse(ReadFileToString(dir_ / "manifest.json").value_or("null"));
  }
  void WriteManifest(const json& manifest) {
    ASSERT_TRUE(WriteFileAtomic(dir_ / "manifest.json", manifest.dump()).ok());
  }
  // Entries of root_ (to see staging and old-bundle leftovers).
  std::vector<std::string> RootEntries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(root_)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }
  fs::path root_, dir_;
};

void ExpectError(const Status& s, StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.code(), code) << s.ToString();
  EXPECT_NE(s.message().find(needle), std::string::npos)
      << "'" << needle << "' not in " << s.ToString();
}

TEST_F(BundleTest, RoundTrip) {
  WriteSample();
  Result<Bundle> bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
  EXPECT_EQ(bundle->kind(), "vision-split");
  EXPECT_EQ(bundle->model()["split_point"], 3);
  EXPECT_EQ(bundle->dir(), dir_);
  ASSERT_EQ(bundle->files().size(), 2u);
  EXPECT_EQ(bundle->files().at("head.pt").bytes, 12u);
  EXPECT_EQ(bundle->files().at("head.pt").sha256, Sha256Hex("head-weights"));
  EXPECT_TRUE(bundle->HasFile("tail.pt"));
  EXPECT_FALSE(bundle->HasFile("manifest.json"));
  EXPECT_EQ(bundle->manifest_sha256(), Sha256File(dir_ / "manifest.json").value_or(""));
  EXPECT_EQ(bundle->PathOf("tail.pt").value_or(""), dir_ / "tail.pt");
  EXPECT_EQ(bundle->ReadVerified("head.pt").value_or(""), "head-weights");

  json manifest = ReadManifest();
  EXPECT_EQ(manifest["format"], "cleave-bundle");
  EXPECT_EQ(manifest["format_version"], kBundleFormatVersion);
  EXPECT_TRUE(manifest["created_unix"].is_number_integer());
  EXPECT_EQ(RootEntries(), std::vector<std::string>{"model.bundle"});  // staging is gone
}

TEST_F(BundleTest, OpenAcceptsTrailingSlashAndReportsAbsoluteDir) {
  WriteSample();
  Result<Bundle> bundle = Bundle::Open(dir_.string() + "/");
  ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
  EXPECT_EQ(bundle->dir(), dir_);
  EXPECT_TRUE(bundle->dir().is_absolute());
}

TEST_F(BundleTest, StagingPathFilesAreHashedAtCommit) {
  BundleWriter writer(dir_);
  Result<fs::path> path = writer.StagingPath("weights.bin");
  ASSERT_TRUE(path.ok()) << path.status().ToString();
  EXPECT_FALSE(fs::exists(dir_));  // nothing visible before Commit
  { std::ofstream(*path, std::ios::binary) << "written by a producer"; }
  EXPECT_EQ(writer.StagingPath("weights.bin").value_or(""), *path);  // idempotent
  ASSERT_TRUE(writer.Commit("test", json::object()).ok());
  Result<Bundle> bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
  EXPECT_EQ(bundle->ReadVerified("weights.bin").value_or(""), "written by a producer");
}

TEST_F(BundleTest, TamperedByteIsDataLossNamingTheFile) {
  WriteSample("head-weights", "tail-weights");
  std::string tail = ReadFileToString(dir_ / "tail.pt").value_or("");
  tail[3] ^= 1;  // same size, different hash
  ASSERT_TRUE(WriteFileAtomic(dir_ / "tail.pt", tail).ok());
  Status s = Bundle::Open(dir_).status();
  ExpectError(s, StatusCode::kDataLoss, "'tail.pt'");
  ExpectError(s, StatusCode::kDataLoss, "SHA-256 mismatch");
}

TEST_F(BundleTest, SizeChangeIsDataLoss) {
  WriteSample();
  ASSERT_TRUE(WriteFileAtomic(dir_ / "head.pt", "head-weights+").ok());
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kDataLoss,
              "'head.pt' has 13 bytes, manifest says 12");
}

TEST_F(BundleTest, ReadVerifiedDetectsChangesAfterOpen) {
  WriteSample();
  Result<Bundle> bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ / "head.pt", "HEAD-weights").ok());
  ExpectError(bundle->ReadVerified("head.pt").status(), StatusCode::kDataLoss, "head.pt");
  fs::remove(dir_ / "tail.pt");
  ExpectError(bundle->ReadVerified("tail.pt").status(), StatusCode::kDataLoss, "missing");
  ExpectError(bundle->ReadVerified("other.pt").status(), StatusCode::kNotFound, "other.pt");
  ExpectError(bundle->PathOf("other.pt").status(), StatusCode::kNotFound, "other.pt");
}

TEST_F(BundleTest, ListedButMissingFileIsDataLoss) {
  WriteSample();
  fs::remove(dir_ / "head.pt");
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kDataLoss, "'head.pt' is listed");
}

TEST_F(BundleTest, ListedNameThatIsNotARegularFileIsDataLoss) {
  WriteSample();
  fs::remove(dir_ / "head.pt");
  ASSERT_EQ(::mkfifo((dir_ / "head.pt").c_str(), 0600), 0);  // would block a naive reader
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kDataLoss, "not a regular file");
}

// Policy: a bundle holds exactly the manifest, the reserved manifest.sig and the listed
// files. Anything else is rejected (DataLoss naming it) so that a file copied in by hand,
// which nothing verified, cannot be mistaken for part of the model.
TEST_F(BundleTest, UnlistedFileIsRejectedButSignatureIsAllowed) {
  WriteSample();
  ASSERT_TRUE(WriteFileAtomic(dir_ / "manifest.sig", "signature bytes").ok());
  EXPECT_TRUE(Bundle::Open(dir_).ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ / "extra.pt", "x").ok());
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kDataLoss, "unlisted entry 'extra.pt'");
  fs::remove(dir_ / "extra.pt");
  fs::create_directory(dir_ / "subdir");
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kDataLoss, "'subdir'");
}

// Clears the process-wide trusted key when a test ends, whatever happened.
struct TrustGuard {
  ~TrustGuard() { (void)SetTrustedBundleKey(""); }
};

TEST_F(BundleTest, SignedBundlesVerifyAndEveryTamperingIsRefused) {
  TrustGuard guard;
  WriteSample();
  auto signer = signing::GenerateEd25519();
  auto stranger = signing::GenerateEd25519();
  ASSERT_TRUE(signer.ok() && stranger.ok());
  const std::string fingerprint = *signing::Ed25519Fingerprint(signer->public_pem);

  // Without a trusted key nothing changes; with one, an unsigned bundle is refused.
  EXPECT_TRUE(Bundle::Open(dir_).ok());
  ASSERT_TRUE(SetTrustedBundleKey(signer->public_pem).ok());
  EXPECT_EQ(TrustedBundleKeyFingerprint(), fingerprint);
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kFailedPrecondition, "not signed");

  // Signing works even while a key is trusted (the signer opens without the check).
  ASSERT_TRUE(SignBundle(dir_, signer->secret_pem).ok());
  auto opened = Bundle::Open(dir_);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_TRUE(VerifyBundleSignature(*opened, signer->public_pem).ok());
  const json sig = json::parse(*ReadFileToString(dir_ / "manifest.sig"));
  EXPECT_EQ(sig["algorithm"], "ed25519");
  EXPECT_EQ(sig["key_sha256"], fingerprint);
  EXPECT_EQ(sig["manifest_sha256"], opened->manifest_sha256());

  // A changed manifest (e.g. a raised exit threshold) breaks the signature.
  json manifest = ReadManifest();
  manifest["model"]["exits"][0] = 0.1;
  WriteManifest(manifest);
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kDataLoss, "does not verify");
  // A re-signed bundle by another key is refused too, naming both keys.
  ASSERT_TRUE(SignBundle(dir_, stranger->secret_pem).ok());
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kDataLoss, fingerprint);
  // A changed weight file fails its hash (the manifest, signed, still lists the old one).
  ASSERT_TRUE(SignBundle(dir_, signer->secret_pem).ok());
  ASSERT_TRUE(Bundle::Open(dir_).ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ / "head.pt", "head-weightz").ok());
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kDataLoss, "head.pt");
  ASSERT_TRUE(WriteFileAtomic(dir_ / "head.pt", "head-weights").ok());
  ASSERT_TRUE(Bundle::Open(dir_).ok());
  // Garbage signature files are DataLoss, never a crash.
  for (const std::string garbage : {"not json", "{}", R"({"algorithm": "rsa", "signature": "00"})",
                                    R"({"algorithm": "ed25519", "signature": "zz"})",
                                    R"({"algorithm": "ed25519", "signature": "abc"})",
                                    R"({"algorithm": "ed25519", "signature": "00ff"})"}) {
    ASSERT_TRUE(WriteFileAtomic(dir_ / "manifest.sig", garbage).ok());
    EXPECT_EQ(Bundle::Open(dir_).status().code(), StatusCode::kDataLoss) << garbage;
  }
  // Lifting the requirement accepts the bundle again; a secret or malformed key is refused.
  ASSERT_TRUE(SetTrustedBundleKey("").ok());
  EXPECT_TRUE(Bundle::Open(dir_).ok());
  EXPECT_EQ(SetTrustedBundleKey(signer->secret_pem).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SetTrustedBundleKey("garbage").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(TrustedBundleKeyFingerprint(), "");
  EXPECT_FALSE(TrustBundleKeyFile((root_ / "missing.pub").string()).ok());
  EXPECT_TRUE(TrustBundleKeyFile("").ok());
}

TEST_F(BundleTest, WrongFormatVersionIsVersionMismatch) {
  WriteSample();
  json manifest = ReadManifest();
  manifest["format_version"] = 2;
  WriteManifest(manifest);
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kVersionMismatch, "format_version 2");
}

TEST_F(BundleTest, MalformedManifestsAreInvalidArgumentNamingTheKey) {
  WriteSample();
  const json good = ReadManifest();
  struct Case {
    std::function<void(json&)> mutate;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {[](json& m) { m = json::array(); }, "(top level)"},
      {[](json& m) { m.erase("format"); }, "\"format\""},
      {[](json& m) { m["format"] = "zip"; }, "\"format\" is \"zip\""},
      {[](json& m) { m["format_version"] = "1"; }, "\"format_version\""},
      {[](json& m) { m.erase("created_unix"); }, "\"created_unix\""},
      {[](json& m) { m["kind"] = 5; }, "\"kind\""},
      {[](json& m) { m["model"] = "x"; }, "\"model\""},
      {[](json& m) { m.erase("files"); }, "\"files\""},
      {[](json& m) { m["files"] = json::array(); }, "\"files\" must be an object"},
      {[](json& m) { m["files"]["head.pt"] = 1; }, "\"files.head.pt\""},
      {[](json& m) { m["files"]["head.pt"].erase("sha256"); }, "\"files.head.pt.sha256\""},
      {[](json& m) { m["files"]["head.pt"]["sha256"] = std::string(64, 'A'); },
       "\"files.head.pt.sha256\""},
      {[](json& m) { m["files"]["head.pt"]["sha256"] = "abc"; }, "\"files.head.pt.sha256\""},
      {[](json& m) { m["files"]["head.pt"]["bytes"] = -1; }, "\"files.head.pt.bytes\""},
      {[](json& m) { m["files"]["head.pt"]["bytes"] = 1.5; }, "\"files.head.pt.bytes\""},
      {[](json& m) { m["files"]["../escape"] = m["files"]["head.pt"]; }, "'../escape'"},
      {[](json& m) { m["files"]["a/b"] = m["files"]["head.pt"]; }, "'a/b'"},
      {[](json& m) { m["files"]["manifest.json"] = m["files"]["head.pt"]; }, "reserved"},
  };
  for (const Case& c : cases) {
    json manifest = good;
    c.mutate(manifest);
    WriteManifest(manifest);
    ExpectError(Bundle::Open(dir_).status(), StatusCode::kInvalidArgument, c.needle);
  }
  ASSERT_TRUE(WriteFileAtomic(dir_ / "manifest.json", "{\"format\": ").ok());
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kInvalidArgument, "not valid JSON");
}

TEST_F(BundleTest, MissingDirectoryOrManifestIsNotFound) {
  ExpectError(Bundle::Open(root_ / "absent").status(), StatusCode::kNotFound, "absent");
  fs::create_directory(dir_);
  ExpectError(Bundle::Open(dir_).status(), StatusCode::kNotFound, "manifest.json");
  ASSERT_TRUE(WriteFileAtomic(root_ / "plain", "x").ok());
  EXPECT_EQ(Bundle::Open(root_ / "plain").status().code(), StatusCode::kNotFound);
}

TEST_F(BundleTest, UncommittedWriterLeavesNothing) {
  {
    BundleWriter writer(dir_);
    ASSERT_TRUE(writer.AddFile("head.pt", "x").ok());
    ASSERT_TRUE(writer.StagingPath("tail.pt").ok());
    EXPECT_EQ(RootEntries().size(), 1u);  // the hidden staging directory
    EXPECT_FALSE(fs::exists(dir_));
  }
  EXPECT_TRUE(RootEntries().empty());
}

TEST_F(BundleTest, RecommitReplacesExistingBundle) {
  WriteSample("old-head", "old-tail");
  Result<Bundle> old_bundle = Bundle::Open(dir_);
  ASSERT_TRUE(old_bundle.ok());
  {
    BundleWriter writer(dir_);
    ASSERT_TRUE(writer.AddFile("head.pt", "new-head").ok());
    // Until Commit the old bundle is intact and still verifies.
    EXPECT_TRUE(Bundle::Open(dir_).ok());
    EXPECT_EQ(ReadFileToString(dir_ / "head.pt").value_or(""), "old-head");
    ASSERT_TRUE(writer.Commit("vision-split-v2", json::object()).ok());
  }
  Result<Bundle> bundle = Bundle::Open(dir_);
  ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
  EXPECT_EQ(bundle->kind(), "vision-split-v2");
  EXPECT_EQ(bundle->files().size(), 1u);  // tail.pt of the old bundle is gone
  EXPECT_FALSE(fs::exists(dir_ / "tail.pt"));
  EXPECT_EQ(bundle->ReadVerified("head.pt").value_or(""), "new-head");
  EXPECT_NE(bundle->manifest_sha256(), old_bundle->manifest_sha256());
  EXPECT_EQ(RootEntries(), std::vector<std::string>{"model.bundle"});  // no staging/old left
}

TEST_F(BundleTest, RefusesToReplaceSomethingThatIsNotABundle) {
  fs::create_directory(dir_);
  ASSERT_TRUE(WriteFileAtomic(dir_ / "precious.txt", "user data").ok());
  BundleWriter writer(dir_);
  ASSERT_TRUE(writer.AddFile("head.pt", "x").ok());
  ExpectError(writer.Commit("k", json::object()), StatusCode::kFailedPrecondition,
              "without manifest.json");
  EXPECT_TRUE(fs::exists(dir_ / "precious.txt"));

  const fs::path file = root_ / "file.bundle";
  ASSERT_TRUE(WriteFileAtomic(file, "x").ok());
  BundleWriter over_file(file);
  ExpectError(over_file.Commit("k", json::object()), StatusCode::kFailedPrecondition,
              "not a directory");

  // An existing empty directory is fine to replace.
  const fs::path empty = root_ / "empty.bundle";
  fs::create_directory(empty);
  BundleWriter over_empty(empty);
  EXPECT_TRUE(over_empty.Commit("k", json::object()).ok());
  EXPECT_TRUE(Bundle::Open(empty).ok());
}

TEST_F(BundleTest, BadNamesAreRejected) {
  BundleWriter writer(dir_);
  const std::vector<std::string> bad = {"",
                                        "a/b",
                                        "/abs",
                                        "..",
                                        "../x",
                                        "x..y",
                                        ".",
                                        "a\\b",
                                        std::string("a\0b", 3),
                                        "manifest.json",
                                        "manifest.sig"};
  for (const std::string& name : bad) {
    EXPECT_EQ(writer.AddFile(name, "x").code(), StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(writer.StagingPath(name).status().code(), StatusCode::kInvalidArgument) << name;
  }
  EXPECT_FALSE(fs::exists(root_ / "x"));
}

TEST_F(BundleTest, WriterMisuseIsReported) {
  BundleWriter writer(dir_);
  ASSERT_TRUE(writer.AddFile("a.pt", "1").ok());
  EXPECT_EQ(writer.AddFile("a.pt", "2").code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(writer.StagingPath("a.pt").status().code(), StatusCode::kAlreadyExists);
  ASSERT_TRUE(writer.StagingPath("b.pt").ok());
  EXPECT_EQ(writer.AddFile("b.pt", "2").code(), StatusCode::kAlreadyExists);
  // b.pt was promised but never written.
  ExpectError(writer.Commit("k", json::object()), StatusCode::kFailedPrecondition, "b.pt");
  EXPECT_FALSE(fs::exists(dir_));
}

TEST_F(BundleTest, CommitRejectsUnlistedStagingEntriesAndDoubleCommit) {
  BundleWriter writer(dir_);
  Result<fs::path> path = writer.StagingPath("w.pt");
  ASSERT_TRUE(path.ok());
  ASSERT_TRUE(WriteFileAtomic(*path, "w").ok());
  ASSERT_TRUE(WriteFileAtomic(path->parent_path() / "w.pt.tmp", "junk").ok());
  ExpectError(writer.Commit("k", json::object()), StatusCode::kFailedPrecondition, "w.pt.tmp");
  fs::remove(path->parent_path() / "w.pt.tmp");
  ASSERT_TRUE(writer.Commit("k", json::object()).ok());
  EXPECT_EQ(writer.Commit("k", json::object()).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(writer.AddFile("c.pt", "x").code(), StatusCode::kFailedPrecondition);
}

TEST_F(BundleTest, ParentDirectoriesAreCreated) {
  BundleWriter writer(root_ / "a" / "b" / "bundle");
  ASSERT_TRUE(writer.AddFile("x.bin", std::string(100000, '\7')).ok());
  ASSERT_TRUE(writer.Commit("k", json::object()).ok());
  EXPECT_TRUE(Bundle::Open(root_ / "a" / "b" / "bundle").ok());
}

}  // namespace
}  // namespace cleave

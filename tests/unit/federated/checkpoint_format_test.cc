// The checkpoint file format (federated/checkpoint_format.h): write/read round trip, the file
// layout, and every way a file can be missing, tampered with, truncated or invalid.
#include "federated/checkpoint_format.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>

#include "common/file_util.h"
#include "unit/common/fl_wire_test_util.h"

namespace cleave::federated {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using wire::fl::testing::ExpectInvalid;
using wire::fl::testing::ExpectSameTensor;
using wire::fl::testing::F32;
using wire::fl::testing::U8;

class CheckpointFormatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_checkpoint_format_" + UniqueSuffix());
    ASSERT_TRUE(fs::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  static CheckpointData Sample() {
    CheckpointData c;
    c.round = 25;
    c.model_name = "fmnist-cnn";
    c.layout = {{"conv.weight", {4, 1, 3, 3}}, {"conv.bias", {4}}, {"fc.weight", {10, 4}}};
    c.weights = {F32({4, 1, 3, 3}, 1), F32({4}, 2), F32({10, 4}, 3)};
    c.strategy_name = "fedadam";
    c.strategy_state = {{"m.conv.weight", F32({4, 1, 3, 3}, 4)},
                        {"step", F32({}, 5)},
                        {"v.fc.weight", U8({10, 4}, 6)}};
    c.engine_state = R"({"rng":"12345 678","history":[{"round":1,"loss":2.3}]})";
    return c;
  }

  static void ExpectSame(const CheckpointData& a, const CheckpointData& b) {
    EXPECT_EQ(a.format_version, b.format_version);
    EXPECT_EQ(a.round, b.round);
    EXPECT_EQ(a.model_name, b.model_name);
    ASSERT_EQ(a.layout.size(), b.layout.size());
    for (size_t i = 0; i < a.layout.size(); ++i) {
      EXPECT_EQ(a.layout[i].name, b.layout[i].name);
      EXPECT_EQ(a.layout[i].shape, b.layout[i].shape);
      ExpectSameTensor(a.weights[i], b.weights[i]);
    }
    EXPECT_EQ(a.strategy_name, b.strategy_name);
    ASSERT_EQ(a.strategy_state.size(), b.strategy_state.size());
    for (size_t i = 0; i < a.strategy_state.size(); ++i) {
      EXPECT_EQ(a.strategy_state[i].name, b.strategy_state[i].name);
      ExpectSameTensor(a.strategy_state[i].tensor, b.strategy_state[i].tensor);
    }
    EXPECT_EQ(a.engine_state, b.engine_state);
  }

  // Writes raw bytes (bypassing the checkpoint writer) and reads them back as a checkpoint.
  Result<CheckpointData> ReadRaw(const std::string& bytes) {
    const fs::path path = dir_ / "raw.ckpt";
    EXPECT_TRUE(WriteFileAtomic(path, bytes).ok());
    return ReadCheckpointFile(path);
  }

  fs::path dir_;
};

TEST_F(CheckpointFormatTest, WriteReadRoundTrip) {
  const fs::path path = dir_ / "round-25.ckpt";
  const CheckpointData in = Sample();
  ASSERT_TRUE(WriteCheckpointFile(path, in).ok());
  auto out = ReadCheckpointFile(path);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectSame(in, *out);

  // Overwrites atomically; an empty strategy state and engine state are fine.
  CheckpointData next = Sample();
  next.round = 26;
  next.strategy_name = "fedavg";
  next.strategy_state.clear();
  next.engine_state.clear();
  ASSERT_TRUE(WriteCheckpointFile(path, next).ok());
  out = ReadCheckpointFile(path);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ExpectSame(next, *out);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(CheckpointFormatTest, FileLayout) {
  const std::string file = SerializeCheckpointFile(Sample());
  ASSERT_GT(file.size(), kCheckpointHeaderBytes);
  EXPECT_EQ(file.substr(0, 8), "CLVCKPT\n");
  EXPECT_EQ(file.substr(8, 4), std::string("\x01\0\0\0", 4));
  const std::string payload = file.substr(kCheckpointHeaderBytes);
  uint64_t length;
  std::memcpy(&length, file.data() + 12, 8);
  EXPECT_EQ(length, payload.size());
  EXPECT_EQ(file.substr(20, 64), Sha256Hex(payload));
  EXPECT_EQ(payload, EncodeCheckpoint(Sample()));
  auto decoded = DecodeCheckpoint(payload);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  ExpectSame(Sample(), *decoded);
}

TEST_F(CheckpointFormatTest, MissingFileIsNotFound) {
  auto out = ReadCheckpointFile(dir_ / "nope.ckpt");
  EXPECT_EQ(out.status().code(), StatusCode::kNotFound) << out.status().ToString();
  EXPECT_THAT(out.status().message(), HasSubstr("nope.ckpt"));
}

TEST_F(CheckpointFormatTest, EveryTamperedByteIsDetected) {
  const std::string file = SerializeCheckpointFile(Sample());
  for (size_t i = 0; i < file.size(); ++i) {
    std::string tampered = file;
    tampered[i] ^= 0x20;
    auto out = ParseCheckpointFile(tampered, "t.ckpt");
    ASSERT_FALSE(out.ok()) << "byte " << i;
    if (i >= 8 && i < 12) {
      EXPECT_EQ(out.status().code(), StatusCode::kVersionMismatch) << out.status().ToString();
    } else {
      EXPECT_EQ(out.status().code(), StatusCode::kDataLoss)
          << "byte " << i << ": " << out.status().ToString();
    }
  }
  std::string tampered = file;
  tampered.back() ^= 1;
  auto out = ReadRaw(tampered);
  ASSERT_EQ(out.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(out.status().message(), HasSubstr("raw.ckpt' is corrupt: the payload's SHA-256 is"));
}

TEST_F(CheckpointFormatTest, TruncatedFilesAreDataLoss) {
  const std::string file = SerializeCheckpointFile(Sample());
  for (size_t length = 0; length < file.size(); ++length) {
    auto out = ParseCheckpointFile(file.substr(0, length), "t.ckpt");
    ASSERT_EQ(out.status().code(), StatusCode::kDataLoss) << "length " << length;
    EXPECT_THAT(out.status().message(), HasSubstr("'t.ckpt' is truncated"));
  }
  auto out = ReadRaw(file.substr(0, file.size() - 10));
  EXPECT_EQ(out.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(out.status().message(), HasSubstr("is truncated: the header promises a"));
  out = ReadRaw(file + "x");
  EXPECT_EQ(out.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(out.status().message(), HasSubstr("has trailing bytes"));
}

TEST_F(CheckpointFormatTest, WrongMagicAndVersion) {
  std::string file = SerializeCheckpointFile(Sample());
  file[0] = 'X';
  auto out = ReadRaw(file);
  EXPECT_EQ(out.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(out.status().message(), HasSubstr("is not a cleave checkpoint (bad magic)"));
  out = ReadRaw(std::string(200, '\0'));
  EXPECT_THAT(out.status().message(), HasSubstr("bad magic"));

  file = SerializeCheckpointFile(Sample());
  file[8] = 2;
  out = ReadRaw(file);
  EXPECT_EQ(out.status().code(), StatusCode::kVersionMismatch);
  EXPECT_THAT(out.status().message(), HasSubstr("format version 2 but this build reads version 1"));

  // A consistent file whose payload claims another version (header and digest are fine).
  CheckpointData future = Sample();
  future.format_version = 2;
  file = SerializeCheckpointFile(future);
  file[8] = 1;
  out = ReadRaw(file);
  EXPECT_EQ(out.status().code(), StatusCode::kVersionMismatch) << out.status().ToString();
  EXPECT_THAT(out.status().message(), HasSubstr("checkpoint payload has version 2"));
}

TEST_F(CheckpointFormatTest, GarbagePayloadWithValidDigestIsRejected) {
  const std::string payload = "\x10\x20\x30 not capnp";
  std::string file(kCheckpointMagic);
  const uint32_t version = kCheckpointFormatVersion;
  const uint64_t length = payload.size();
  file.append(reinterpret_cast<const char*>(&version), 4);
  file.append(reinterpret_cast<const char*>(&length), 8);
  file += Sha256Hex(payload) + payload;
  auto out = ReadRaw(file);
  ASSERT_EQ(out.status().code(), StatusCode::kInvalidArgument) << out.status().ToString();
  EXPECT_THAT(out.status().message(), HasSubstr("raw.ckpt': malformed checkpoint payload"));
  // Nor does random garbage decode as a payload.
  std::mt19937 rng(17);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes(1 + rng() % 300, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    EXPECT_FALSE(DecodeCheckpoint(bytes).ok());
  }
}

TEST_F(CheckpointFormatTest, WriterRefusesInvalidCheckpointsAndWritesNothing) {
  struct Case {
    void (*mutate)(CheckpointData&);
    const char* fragment;
  };
  const Case cases[] = {
      {[](CheckpointData& c) { c.weights.pop_back(); }, "has 2 weight tensors for 3 layout"},
      {[](CheckpointData& c) { c.layout[2].name = "conv.bias"; },
       "checkpoint layout[2] repeats the name 'conv.bias'"},
      {[](CheckpointData& c) { c.layout[1].name.clear(); }, "checkpoint layout[1] name is empty"},
      {[](CheckpointData& c) { c.layout[1].shape = {5}; },
       "checkpoint weights[1] ('conv.bias') has shape [4] but the layout says [5]"},
      {[](CheckpointData& c) {
         c.weights[2] = U8({10, 4}, 1);
       },
       "checkpoint weights[2] ('fc.weight') must be f32"},
      {[](CheckpointData& c) { c.weights[0].data[3] = '\x7f', c.weights[0].data[2] = '\x80'; },
       "checkpoint weights[0] ('conv.weight'): f32 element 0 is not finite"},
      {[](CheckpointData& c) { c.strategy_state[2].name = "step"; },
       "strategy_state[2] repeats the name 'step'"},
      {[](CheckpointData& c) { c.strategy_state[0].tensor.data.clear(); },
       "strategy_state[0] ('m.conv.weight'): tensor data is 0 bytes"},
      {[](CheckpointData& c) { c.strategy_name.clear(); }, "checkpoint strategy_name is empty"},
      {[](CheckpointData& c) { c.model_name = "a\x01"; }, "model_name contains control byte 1"},
      {[](CheckpointData& c) { c.layout.clear(), c.weights.clear(); }, "layout is empty"},
      {[](CheckpointData& c) { c.layout[0].shape.assign(9, 1); }, "layout[0] shape"},
  };
  const fs::path path = dir_ / "bad.ckpt";
  for (const Case& c : cases) {
    CheckpointData data = Sample();
    c.mutate(data);
    ExpectInvalid(ValidateCheckpoint(data), c.fragment);
    const Status status = WriteCheckpointFile(path, data);
    ExpectInvalid(status, c.fragment);
    EXPECT_THAT(status.message(), HasSubstr("refusing to write checkpoint"));
    EXPECT_FALSE(fs::exists(path));
    // The decoder enforces the same rules on a file that bypassed the writer.
    ExpectInvalid(DecodeCheckpoint(EncodeCheckpoint(data)).status(), c.fragment);
  }
  CheckpointData data = Sample();
  data.format_version = 3;
  EXPECT_EQ(WriteCheckpointFile(path, data).code(), StatusCode::kVersionMismatch);
  EXPECT_EQ(WriteCheckpointFile(dir_ / "no-such-dir" / "x.ckpt", Sample()).code(),
            StatusCode::kNotFound);
}

}  // namespace
}  // namespace cleave::federated

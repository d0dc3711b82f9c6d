#include "federated/replay_buffer.h"

#include <sys/stat.h>

#include <filesystem>

#include <gtest/gtest.h>

#include "common/file_util.h"

namespace cleave::federated {
namespace {

namespace fs = std::filesystem;

// `n` rows of 2x3 "images" whose every pixel is the row's id, ids from `first`, labels given.
LabeledBatch Rows(int64_t first, int64_t n, int64_t label) {
  LabeledBatch b;
  const torch::Tensor ids = torch::arange(first, first + n, torch::kLong);
  b.images = ids.to(torch::kFloat).reshape({n, 1, 1, 1}).expand({n, 1, 2, 3}).contiguous();
  b.labels = torch::full({n}, label, torch::kLong);
  b.ids = ids;
  return b;
}

class ReplayBufferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_replay_" + UniqueSuffix());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path dir_;
};

TEST_F(ReplayBufferTest, MemoryIsBoundedByCapacityAndBytes) {
  ReplayBuffer buffer(ReplayOptions{10, 0, false, 1});
  ASSERT_TRUE(buffer.Add(Rows(1, 5, 0)).ok());
  const int64_t bytes = buffer.bytes();
  EXPECT_GT(bytes, 0);
  EXPECT_EQ(buffer.size(), 5);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(buffer.Add(Rows(6 + 10 * i, 10, 0)).ok());
  EXPECT_EQ(buffer.size(), 10);
  EXPECT_EQ(buffer.seen(), 1005);
  EXPECT_EQ(buffer.bytes(), bytes);  // allocated once
  // A byte budget below capacity x row bytes caps the rows.
  ReplayBuffer small(ReplayOptions{1000, 400, false, 1});
  ASSERT_TRUE(small.Add(Rows(1, 50, 0)).ok());
  EXPECT_LT(small.capacity(), 1000);
  EXPECT_LE(small.bytes(), 400);
  EXPECT_EQ(small.size(), small.capacity());
  // One row larger than the budget is refused with the reason.
  ReplayBuffer tiny(ReplayOptions{10, 8, false, 1});
  Status s = tiny.Add(Rows(1, 1, 0));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("max_bytes"), std::string::npos) << s.ToString();
}

TEST_F(ReplayBufferTest, ReservoirKeepsEveryPartOfTheStreamEquallyLikely) {
  // 5,000 rows into 500 slots: each block of 500 consecutive rows keeps ~50 (binomial-like,
  // sd ~6.7), whatever its position in the stream, over several seeds.
  for (uint64_t seed : {1, 2, 3}) {
    ReplayBuffer buffer(ReplayOptions{500, 0, false, seed});
    for (int i = 0; i < 50; ++i) ASSERT_TRUE(buffer.Add(Rows(1 + 100 * i, 100, 0)).ok());
    const torch::Tensor ids = buffer.All().ids;
    ASSERT_EQ(ids.size(0), 500);
    for (int block = 0; block < 10; ++block) {
      const int64_t kept =
          ids.ge(1 + 500 * block).logical_and(ids.lt(1 + 500 * (block + 1))).sum().item<int64_t>();
      EXPECT_GT(kept, 25) << "seed " << seed << " block " << block;
      EXPECT_LT(kept, 75) << "seed " << seed << " block " << block;
    }
    // No row is stored twice.
    EXPECT_EQ(std::get<0>(torch::_unique(ids)).size(0), 500);
  }
}

TEST_F(ReplayBufferTest, ClassBalancedReservoirEvensOutAnImbalancedStream) {
  // 90 % class 0, 10 % class 1, interleaved.
  const auto fill = [](ReplayBuffer& buffer) {
    for (int i = 0; i < 200; ++i) {
      ASSERT_TRUE(buffer.Add(Rows(1 + 10 * i, 9, 0)).ok());
      ASSERT_TRUE(buffer.Add(Rows(1 + 10 * i + 9, 1, 1)).ok());
    }
  };
  ReplayBuffer plain(ReplayOptions{100, 0, false, 7});
  fill(plain);
  ReplayBuffer balanced(ReplayOptions{100, 0, true, 7});
  fill(balanced);
  ASSERT_EQ(plain.ClassCounts().size(), 2u);
  ASSERT_EQ(balanced.ClassCounts().size(), 2u);
  EXPECT_LT(plain.ClassCounts()[1], 22);
  EXPECT_GE(balanced.ClassCounts()[1], 45);
  EXPECT_EQ(balanced.ClassCounts()[0] + balanced.ClassCounts()[1], 100);
}

TEST_F(ReplayBufferTest, SoftLabelsCountByTheirArgmaxAndSetLabelOverrides) {
  ReplayBuffer buffer(ReplayOptions{10, 0, true, 1});
  LabeledBatch b = Rows(1, 3, -1);
  b.soft = torch::tensor({{0.f, 5.f, 0.f}, {0.f, 0.f, 5.f}, {0.f, 0.f, 0.f}});
  b.has_soft = torch::tensor({true, true, false});
  ASSERT_TRUE(buffer.Add(b).ok());
  EXPECT_EQ(buffer.ClassCounts(), (std::vector<int64_t>{0, 1, 1}));
  EXPECT_EQ(buffer.SetLabel(3, 0), 1);  // the unlabelled row gets feedback
  EXPECT_EQ(buffer.SetLabel(99, 0), 0);
  EXPECT_EQ(buffer.ClassCounts(), (std::vector<int64_t>{1, 1, 1}));
  const LabeledBatch all = buffer.All();
  EXPECT_EQ(all.labels[2].item<int64_t>(), 0);
  EXPECT_TRUE(all.has_soft[0].item<bool>());
  EXPECT_FALSE(all.has_soft[2].item<bool>());
}

TEST_F(ReplayBufferTest, SampleDrawsDistinctRows) {
  ReplayBuffer buffer(ReplayOptions{50, 0, false, 1});
  EXPECT_EQ(buffer.Sample(5).size(), 0);
  ASSERT_TRUE(buffer.Add(Rows(1, 40, 2)).ok());
  const LabeledBatch s = buffer.Sample(10);
  ASSERT_EQ(s.size(), 10);
  EXPECT_EQ(std::get<0>(torch::_unique(s.ids)).size(0), 10);
  // Each row's image still matches its id.
  EXPECT_TRUE(torch::equal(s.images.flatten(1).select(1, 0).to(torch::kLong), s.ids));
  EXPECT_EQ(buffer.Sample(100).size(), 40);
}

TEST_F(ReplayBufferTest, RejectsMalformedBatches) {
  ReplayBuffer buffer(ReplayOptions{10, 0, false, 1});
  LabeledBatch no_labels = Rows(1, 2, 0);
  no_labels.labels = torch::Tensor();
  EXPECT_EQ(buffer.Add(no_labels).code(), StatusCode::kInvalidArgument);
  LabeledBatch wrong_count = Rows(1, 2, 0);
  wrong_count.labels = torch::zeros({3}, torch::kLong);
  EXPECT_EQ(buffer.Add(wrong_count).code(), StatusCode::kInvalidArgument);
  LabeledBatch soft_without_mask = Rows(1, 2, 0);
  soft_without_mask.soft = torch::zeros({2, 3});
  EXPECT_EQ(buffer.Add(soft_without_mask).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(buffer.Add(Rows(1, 2, 0)).ok());
  LabeledBatch other_shape = Rows(1, 2, 0);
  other_shape.images = torch::zeros({2, 1, 3, 3});
  Status s = buffer.Add(other_shape);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("shape"), std::string::npos);
  EXPECT_EQ(buffer.size(), 2);
  EXPECT_EQ(ReplayBuffer(ReplayOptions{0, 0, false, 1}).Add(Rows(1, 1, 0)).code(),
            StatusCode::kInvalidArgument);
}

TEST_F(ReplayBufferTest, SurvivesARestartPlainAndSealed) {
  ReplayBuffer buffer(ReplayOptions{20, 0, false, 1});
  LabeledBatch b = Rows(1, 30, 1);
  b.soft = torch::randn({30, 4});
  b.has_soft = torch::rand({30}).gt(0.5);
  b.logits = torch::randn({30, 4});
  b.has_logits = torch::ones({30}, torch::kBool);
  ASSERT_TRUE(buffer.Add(b).ok());
  const fs::path plain = dir_ / "replay.bin";
  ASSERT_TRUE(buffer.Save(plain).ok());
  struct stat st {};
  ASSERT_EQ(::stat(plain.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto loaded = ReplayBuffer::Load(plain, buffer.options());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->size(), 20);
  EXPECT_EQ(loaded->seen(), 30);
  const LabeledBatch a = buffer.All(), c = loaded->All();
  EXPECT_TRUE(torch::equal(a.images, c.images));
  EXPECT_TRUE(torch::equal(a.labels, c.labels));
  EXPECT_TRUE(torch::equal(a.soft, c.soft));
  EXPECT_TRUE(torch::equal(a.has_soft, c.has_soft));
  EXPECT_TRUE(torch::equal(a.logits, c.logits));
  EXPECT_TRUE(torch::equal(a.has_logits, c.has_logits));
  EXPECT_TRUE(torch::equal(a.ids, c.ids));
  // Sealed: the served inputs are not on disk in the clear.
  crypto::Key256 key{};
  key.fill(7);
  const fs::path sealed = dir_ / "sealed.bin";
  ASSERT_TRUE(buffer.Save(sealed, key).ok());
  const std::string bytes = ReadFileToString(sealed).value();
  const torch::Tensor first = a.images[0].contiguous();
  const std::string pixels(static_cast<const char*>(first.data_ptr()), 24);
  EXPECT_EQ(bytes.find(pixels), std::string::npos);
  auto opened = ReplayBuffer::Load(sealed, buffer.options(), key);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_TRUE(torch::equal(opened->All().images, a.images));
  crypto::Key256 wrong = key;
  wrong[0] ^= 1;
  EXPECT_EQ(ReplayBuffer::Load(sealed, buffer.options(), wrong).status().code(),
            StatusCode::kDataLoss);
  EXPECT_EQ(ReplayBuffer::Load(sealed, buffer.options()).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(ReplayBuffer::Load(plain, buffer.options(), key).status().code(),
            StatusCode::kDataLoss);
  // A smaller buffer keeps a subset.
  auto cut = ReplayBuffer::Load(plain, ReplayOptions{5, 0, false, 1});
  ASSERT_TRUE(cut.ok());
  EXPECT_EQ(cut->size(), 5);
  EXPECT_EQ(cut->seen(), 30);
}

TEST_F(ReplayBufferTest, CorruptFilesAreRefusedNotLoaded) {
  ReplayBuffer buffer(ReplayOptions{8, 0, false, 1});
  ASSERT_TRUE(buffer.Add(Rows(1, 8, 3)).ok());
  const fs::path path = dir_ / "replay.bin";
  ASSERT_TRUE(buffer.Save(path).ok());
  const std::string good = ReadFileToString(path).value();
  const auto load_bytes = [&](const std::string& bytes) {
    EXPECT_TRUE(WriteFileAtomic(dir_ / "bad.bin", bytes).ok());
    return ReplayBuffer::Load(dir_ / "bad.bin", buffer.options()).status();
  };
  EXPECT_EQ(ReplayBuffer::Load(dir_ / "missing.bin", buffer.options()).status().code(),
            StatusCode::kNotFound);
  std::string flipped = good;
  flipped[good.size() - 5] ^= 0x40;
  Status s = load_bytes(flipped);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("digest"), std::string::npos) << s.ToString();
  EXPECT_EQ(load_bytes(good.substr(0, good.size() - 1)).code(), StatusCode::kDataLoss);
  EXPECT_EQ(load_bytes(good + "x").code(), StatusCode::kDataLoss);
  EXPECT_EQ(load_bytes(good.substr(0, 20)).code(), StatusCode::kDataLoss);
  std::string magic = good;
  magic[0] = 'X';
  EXPECT_EQ(load_bytes(magic).code(), StatusCode::kDataLoss);
  std::string version = good;
  version[8] = 9;
  EXPECT_EQ(load_bytes(version).code(), StatusCode::kVersionMismatch);
  EXPECT_EQ(load_bytes("").code(), StatusCode::kDataLoss);
}

TEST_F(ReplayBufferTest, AnEmptyBufferRoundTrips) {
  ReplayBuffer buffer(ReplayOptions{8, 0, false, 1});
  ASSERT_TRUE(buffer.Save(dir_ / "empty.bin").ok());
  auto loaded = ReplayBuffer::Load(dir_ / "empty.bin", buffer.options());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->size(), 0);
  ASSERT_TRUE(loaded->Add(Rows(1, 3, 0)).ok());
  EXPECT_EQ(loaded->size(), 3);
}

}  // namespace
}  // namespace cleave::federated

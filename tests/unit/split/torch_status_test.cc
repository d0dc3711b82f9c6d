#include "split/torch_status.h"

#include <filesystem>
#include <fstream>
#include <new>
#include <stdexcept>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "testing/tiny_bundle.h"

namespace cleave::split {
namespace {

constexpr TorchSource kAllSources[] = {TorchSource::kStoredBytes, TorchSource::kExternalInput,
                                       TorchSource::kOwnState};

// A real libtorch failure: [2,3] x [4,5].
torch::Tensor MismatchedMatmul() { return torch::matmul(torch::ones({2, 3}), torch::ones({4, 5})); }

TEST(TorchStatusTest, EachSourceMapsToItsCode) {
  EXPECT_EQ(TorchSourceCode(TorchSource::kStoredBytes), StatusCode::kDataLoss);
  EXPECT_EQ(TorchSourceCode(TorchSource::kExternalInput), StatusCode::kInvalidArgument);
  EXPECT_EQ(TorchSourceCode(TorchSource::kOwnState), StatusCode::kInternal);
  for (TorchSource source : kAllSources) {
    const Result<torch::Tensor> r = CallTorch(source, "matmul", MismatchedMatmul);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), TorchSourceCode(source)) << r.status().ToString();
  }
}

TEST(TorchStatusTest, MessageIsContextThenLibtorchsFirstLine) {
  const Result<torch::Tensor> r =
      CallTorch(TorchSource::kExternalInput, "scoring request 7", MismatchedMatmul);
  ASSERT_FALSE(r.ok());
  const Status status = r.status();
  const std::string& message = status.message();
  EXPECT_EQ(message.rfind("scoring request 7: ", 0), 0u) << message;
  EXPECT_NE(message.find("cannot be multiplied"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_EQ(message.find("Exception raised from"), std::string::npos) << message;
}

TEST(TorchStatusTest, OnlyTheFirstNonEmptyLineIsKept) {
  const auto throw_multiline = [] { TORCH_CHECK(false, "\n  \n  shapes differ  \nsecond line"); };
  const Status s = CallTorch(TorchSource::kOwnState, "ctx", throw_multiline);
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_EQ(s.message(), "ctx: shapes differ");

  const Status blank =
      CallTorch(TorchSource::kOwnState, "ctx", [] { TORCH_CHECK(false, "\n \n"); });
  EXPECT_EQ(blank.message(), "ctx: unknown libtorch error");
}

TEST(TorchStatusTest, EmptyContextLeavesJustTheFirstLine) {
  const Status s =
      CallTorch(TorchSource::kOwnState, "", [] { TORCH_CHECK(false, "bad shape\ndetails"); });
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_EQ(s.message(), "bad shape");
}

TEST(TorchStatusTest, GarbageArchiveFileIsDataLossNamingTheFile) {
  const std::filesystem::path dir = testing::TempPath("torch_status");
  std::filesystem::create_directories(dir);
  const std::filesystem::path file = dir / "weights.pt";
  std::ofstream(file, std::ios::binary) << "this is not a zip archive, just bytes";
  torch::Tensor loaded;
  const Status s =
      CallTorch(TorchSource::kStoredBytes, file.string() + " is not a readable archive",
                [&] { torch::load(loaded, file.string()); });
  std::filesystem::remove_all(dir);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_EQ(s.message().rfind(file.string() + " is not a readable archive: ", 0), 0u)
      << s.message();
  EXPECT_EQ(s.message().find('\n'), std::string::npos) << s.message();
  EXPECT_FALSE(loaded.defined());
}

TEST(TorchStatusTest, OutOfMemoryIsResourceExhaustedWhateverTheSource) {
  for (TorchSource source : kAllSources) {
    const Status alloc = CallTorch(source, "big tensor", [] { throw std::bad_alloc(); });
    EXPECT_EQ(alloc.code(), StatusCode::kResourceExhausted);
    EXPECT_EQ(alloc.message(), "big tensor: out of memory");
    const Status torch_oom = CallTorch(
        source, "big tensor", [] { C10_THROW_ERROR(OutOfMemoryError, "tried to allocate 9 GiB"); });
    EXPECT_EQ(torch_oom.code(), StatusCode::kResourceExhausted);
    EXPECT_EQ(torch_oom.message(), "big tensor: tried to allocate 9 GiB");
  }
}

TEST(TorchStatusTest, OtherStandardExceptionsFollowTheSameRule) {
  for (TorchSource source : kAllSources) {
    const Status s =
        CallTorch(source, "reader", [] { throw std::runtime_error("unexpected end\nof archive"); });
    EXPECT_EQ(s.code(), TorchSourceCode(source));
    EXPECT_EQ(s.message(), "reader: unexpected end");
  }
}

TEST(TorchStatusTest, AdapterOnACaughtError) {
  try {
    (void)MismatchedMatmul();
    FAIL() << "libtorch accepted mismatched shapes";
  } catch (const c10::Error& e) {
    const Status s = TorchErrorToStatus(e, TorchSource::kStoredBytes, "tail.pt");
    EXPECT_EQ(s.code(), StatusCode::kDataLoss);
    EXPECT_EQ(s.message(), "tail.pt: " + TorchErrorFirstLine(e));
    EXPECT_EQ(TorchErrorFirstLine(e).find('\n'), std::string::npos);
    EXPECT_FALSE(TorchErrorFirstLine(e).empty());
  }
}

TEST(TorchStatusTest, SuccessReturnsTheValue) {
  const Result<torch::Tensor> product = CallTorch(TorchSource::kOwnState, "matmul", [] {
    return torch::matmul(torch::ones({2, 3}), torch::ones({3, 4}));
  });
  ASSERT_TRUE(product.ok()) << product.status().ToString();
  EXPECT_EQ(product->sizes(), torch::IntArrayRef({2, 4}));
  EXPECT_FLOAT_EQ((*product)[1][3].item<float>(), 3.0f);

  const Result<int> plain = CallTorch(TorchSource::kOwnState, "count", [] { return 42; });
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(*plain, 42);

  int calls = 0;
  const Status done = CallTorch(TorchSource::kOwnState, "side effect", [&] { ++calls; });
  EXPECT_TRUE(done.ok());
  EXPECT_EQ(calls, 1);
}

TEST(TorchStatusTest, StatusAndResultFromTheCallablePassThroughUnchanged) {
  const Status own = CallTorch(TorchSource::kStoredBytes, "ctx",
                               [] { return Status::NotFound("no such tensor"); });
  EXPECT_EQ(own.code(), StatusCode::kNotFound);
  EXPECT_EQ(own.message(), "no such tensor");

  const Result<int> own_result = CallTorch(TorchSource::kStoredBytes, "ctx", []() -> Result<int> {
    return Status::OutOfRange("index 9");
  });
  ASSERT_FALSE(own_result.ok());
  EXPECT_EQ(own_result.status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(own_result.status().message(), "index 9");

  const Result<int> value =
      CallTorch(TorchSource::kStoredBytes, "ctx", []() -> Result<int> { return 7; });
  ASSERT_TRUE(value.ok());
  EXPECT_EQ(*value, 7);
}

}  // namespace
}  // namespace cleave::split

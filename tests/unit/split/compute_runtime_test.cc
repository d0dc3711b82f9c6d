#include "split/compute_runtime.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

namespace cleave::split {
namespace {

int OpenBlasThreads() {
  using GetFn = int (*)();
  auto get = reinterpret_cast<GetFn>(::dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return get == nullptr ? -1 : get();
}

TEST(ComputeRuntimeTest, SetsTorchAndOpenBlasThreads) {
  const int torch_before = torch::get_num_threads();
  SetComputeThreads(1);
  EXPECT_EQ(torch::get_num_threads(), 1);
  if (HaveOpenBlasThreadControl()) {
    EXPECT_EQ(OpenBlasThreads(), 1);
    SetComputeThreads(2);
    EXPECT_EQ(OpenBlasThreads(), 2);
  } else {
    GTEST_SKIP() << "libtorch here does not call OpenBLAS (libblas.so.3 is not the one of "
                    "libopenblas0-pthread, which scripts/test installs); only torch's threads "
                    "were checked";
  }
  // Values below one count as one.
  SetComputeThreads(0);
  EXPECT_EQ(torch::get_num_threads(), 1);
  if (HaveOpenBlasThreadControl()) {
    EXPECT_EQ(OpenBlasThreads(), 1);
  }
  SetComputeThreads(torch_before);
}

TEST(ComputeRuntimeTest, DebianLibtorchUsesOpenBlas) {
  // The build uses Debian's libtorch, which links OpenBLAS: if this fails, the BLAS pool is no
  // longer tied to --threads and the serving figures in docs/benchmarks.md no longer hold.
  EXPECT_TRUE(HaveOpenBlasThreadControl());
}

}  // namespace
}  // namespace cleave::split

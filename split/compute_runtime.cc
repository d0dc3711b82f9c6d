#include "split/compute_runtime.h"

#include <dlfcn.h>
#include <malloc.h>

#include <algorithm>

#include <torch/torch.h>

namespace cleave::split {
namespace {

using SetThreadsFn = void (*)(int);

SetThreadsFn OpenBlasSetThreads() {
  static const SetThreadsFn fn =
      reinterpret_cast<SetThreadsFn>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  return fn;
}

}  // namespace

bool HaveOpenBlasThreadControl() { return OpenBlasSetThreads() != nullptr; }

void SetComputeThreads(int threads) {
  threads = std::max(1, threads);
  torch::set_num_threads(threads);
  if (SetThreadsFn fn = OpenBlasSetThreads()) fn(threads);
}

void TuneAllocatorForServing() {
  // 32 MiB is the largest mmap threshold glibc accepts on 64-bit; setting it also stops the
  // dynamic threshold from moving. The trim threshold keeps a heap's free top for reuse.
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

}  // namespace cleave::split

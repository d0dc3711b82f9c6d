// Process-wide settings of the tensor runtime, shared by the daemons and the CLI.
#pragma once

namespace cleave::split {

// Sets libtorch's intra-op threads (OpenMP; the setting belongs to the calling thread and the
// threads it starts later) and the thread pool OpenBLAS keeps for its own GEMMs to `threads`
// (values below 1 count as 1). Debian's libtorch calls OpenBLAS, whose pool defaults to one
// thread per core and spins in sched_yield between calls: left alone, `--threads 1` still ran
// two BLAS threads that competed with the socket threads of a daemon on a 2-core gateway.
// OpenBLAS is found at run time (dlsym), so another BLAS is left as configured.
void SetComputeThreads(int threads);

// Whether OpenBLAS's thread count can be set in this process (it is loaded).
bool HaveOpenBlasThreadControl();

// For long-running processes that compute tensors of similar sizes again and again (the
// serving loops): glibc malloc keeps freed blocks up to 32 MiB in its heaps instead of
// returning them to the kernel after every batch, so a batch does not page-fault its
// buffers back in. Memory stays bounded by the peak working set. Call once, early in main.
void TuneAllocatorForServing();

}  // namespace cleave::split

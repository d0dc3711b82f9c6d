// Clang thread-safety annotations (https://clang.llvm.org/docs/ThreadSafetyAnalysis.html).
//
// They let clang's -Wthread-safety check at compile time that state marked GUARDED_BY(mu) is
// only touched with `mu` held, and that functions marked REQUIRES(mu) / EXCLUDES(mu) are
// called with / without it. The fuzz build (clang, scripts/common.sh cleave_fuzz_smoke)
// makes violations errors. Other compilers (gcc) ignore them: every macro expands to nothing.
//
// Annotate the lock type with CAPABILITY and its scoped holder with SCOPED_CAPABILITY
// (common/mutex.h does); std::mutex itself carries no annotations in libstdc++, so state
// guarded by a plain std::mutex is not checked.
#pragma once

#if defined(__clang__) && defined(__has_attribute)
#define CLEAVE_THREAD_ANNOTATION_(x) __attribute__((x))
#else
#define CLEAVE_THREAD_ANNOTATION_(x)
#endif

// On a class: objects of it are capabilities (locks); `name` appears in diagnostics.
#define CAPABILITY(name) CLEAVE_THREAD_ANNOTATION_(capability(name))

// On a class: an RAII object that acquires capabilities in its constructor and releases
// them in its destructor.
#define SCOPED_CAPABILITY CLEAVE_THREAD_ANNOTATION_(scoped_lockable)

// On a data member: reads and writes need `x` held.
#define GUARDED_BY(x) CLEAVE_THREAD_ANNOTATION_(guarded_by(x))

// On a pointer member: what it points to needs `x` held (the pointer itself does not).
#define PT_GUARDED_BY(x) CLEAVE_THREAD_ANNOTATION_(pt_guarded_by(x))

// On a mutex member: lock order. This one is taken after / before the listed ones.
#define ACQUIRED_AFTER(...) CLEAVE_THREAD_ANNOTATION_(acquired_after(__VA_ARGS__))
#define ACQUIRED_BEFORE(...) CLEAVE_THREAD_ANNOTATION_(acquired_before(__VA_ARGS__))

// On a function: the caller must hold the capabilities (exclusively / at least shared).
#define REQUIRES(...) CLEAVE_THREAD_ANNOTATION_(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) CLEAVE_THREAD_ANNOTATION_(requires_shared_capability(__VA_ARGS__))

// On a function: it acquires / releases the capabilities (none listed: `this`).
#define ACQUIRE(...) CLEAVE_THREAD_ANNOTATION_(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) CLEAVE_THREAD_ANNOTATION_(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...) CLEAVE_THREAD_ANNOTATION_(release_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) CLEAVE_THREAD_ANNOTATION_(release_shared_capability(__VA_ARGS__))

// On a function: it tries to acquire; the first argument is the return value on success.
#define TRY_ACQUIRE(...) CLEAVE_THREAD_ANNOTATION_(try_acquire_capability(__VA_ARGS__))
#define TRY_ACQUIRE_SHARED(...) \
  CLEAVE_THREAD_ANNOTATION_(try_acquire_shared_capability(__VA_ARGS__))

// On a function: the caller must not hold the capabilities (the function takes them itself;
// holding one would deadlock).
#define EXCLUDES(...) CLEAVE_THREAD_ANNOTATION_(locks_excluded(__VA_ARGS__))

// On a function: it checks at run time that the capability is held; afterwards the analysis
// assumes it is.
#define ASSERT_CAPABILITY(x) CLEAVE_THREAD_ANNOTATION_(assert_capability(x))

// On a function: it returns a reference to the capability `x` (an accessor for a lock).
#define RETURN_CAPABILITY(x) CLEAVE_THREAD_ANNOTATION_(lock_returned(x))

// On a function: do not check its body. For the few places the analysis cannot follow
// (it is flow-sensitive only within one function); say why next to each use.
#define NO_THREAD_SAFETY_ANALYSIS CLEAVE_THREAD_ANNOTATION_(no_thread_safety_analysis)

// The cloud's LM context manager: per-session KV caches for the layers the cloud runs
// (split/lm_model.h), keyed by session id, with an idle TTL, a memory budget and
// least-recently-used eviction.
//
// A session's cache holds the keys and values of every layer-K state the edge uploaded for
// it, so the cloud's prediction for a hard token sees the whole (windowed) prefix. When a
// cache is gone (expired, evicted, or the cloud restarted) Find() returns null and the
// service tells the edge, which re-sends the states it buffers for its context window.
//
// Eviction order is least recently used first; the session being served (`keep`) is never
// evicted by its own growth, so a single session larger than the budget still completes
// its request (and is the first to go afterwards). Not thread-safe: the service's loop
// owns it.
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>

#include "common/clock.h"
#include "common/status.h"
#include "split/lm_model.h"

namespace cleave::cloud {

struct LmContextOptions {
  int64_t memory_budget_bytes = int64_t{512} << 20;  // keys + values of all sessions
  int64_t idle_ttl_micros = 600'000'000;             // 10 minutes without a request
  size_t max_sessions = 4096;
  Status Validate() const;
};

struct LmContextStats {
  size_t sessions = 0;
  int64_t bytes = 0;
  uint64_t created_total = 0;
  uint64_t evicted_total = 0;  // for memory or the session count
  uint64_t expired_total = 0;  // idle longer than the TTL
};

class LmContextManager {
 public:
  LmContextManager(LmContextOptions options, Clock& clock);

  // The session's cache, marked used now; null when unknown, expired or evicted.
  split::KvCache* Find(const std::string& session);
  // A new empty cache for `session` (replacing any), made room for by eviction.
  split::KvCache& Create(const std::string& session, split::KvCache empty);
  // Re-accounts `session`'s bytes after its cache grew and evicts other sessions, least
  // recently used first, until the total fits the budget.
  void Update(const std::string& session);
  // Drops the session (the edge ended it). False when it was not there.
  bool Remove(const std::string& session);
  // Drops every session idle longer than the TTL; returns how many.
  size_t ExpireIdle();
  LmContextStats stats() const { return stats_; }

 private:
  struct Entry {
    split::KvCache cache;
    int64_t bytes = 0;
    int64_t last_used = 0;
    std::list<std::string>::iterator lru;  // position in lru_
  };
  void Drop(std::unordered_map<std::string, Entry>::iterator it);
  void EvictFor(const std::string& keep);

  LmContextOptions options_;
  Clock& clock_;
  std::unordered_map<std::string, Entry> sessions_;
  std::list<std::string> lru_;  // front = most recently used
  LmContextStats stats_;
};

}  // namespace cleave::cloud

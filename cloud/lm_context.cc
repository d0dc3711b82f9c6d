#include "cloud/lm_context.h"

#include <iterator>

namespace cleave::cloud {

Status LmContextOptions::Validate() const {
  if (memory_budget_bytes < 1) {
    return Status::InvalidArgument("lm context: memory budget must be positive");
  }
  if (idle_ttl_micros < 1) return Status::InvalidArgument("lm context: idle TTL must be positive");
  if (max_sessions < 1) return Status::InvalidArgument("lm context: max_sessions must be >= 1");
  return Status::Ok();
}

LmContextManager::LmContextManager(LmContextOptions options, Clock& clock)
    : options_(options), clock_(clock) {}

split::KvCache* LmContextManager::Find(const std::string& session) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return nullptr;
  const int64_t now = clock_.NowMicros();
  if (now - it->second.last_used > options_.idle_ttl_micros) {
    Drop(it);
    ++stats_.expired_total;
    return nullptr;
  }
  it->second.last_used = now;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return &it->second.cache;
}

split::KvCache& LmContextManager::Create(const std::string& session, split::KvCache empty) {
  if (auto it = sessions_.find(session); it != sessions_.end()) Drop(it);
  lru_.push_front(session);
  Entry entry;
  entry.cache = std::move(empty);
  entry.bytes = entry.cache.Bytes();
  entry.last_used = clock_.NowMicros();
  entry.lru = lru_.begin();
  stats_.bytes += entry.bytes;
  auto [it, inserted] = sessions_.emplace(session, std::move(entry));
  (void)inserted;
  ++stats_.created_total;
  stats_.sessions = sessions_.size();
  EvictFor(session);
  return it->second.cache;
}

void LmContextManager::Update(const std::string& session) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  const int64_t bytes = it->second.cache.Bytes();
  stats_.bytes += bytes - it->second.bytes;
  it->second.bytes = bytes;
  it->second.last_used = clock_.NowMicros();
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  EvictFor(session);
}

bool LmContextManager::Remove(const std::string& session) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return false;
  Drop(it);
  return true;
}

size_t LmContextManager::ExpireIdle() {
  const int64_t now = clock_.NowMicros();
  size_t dropped = 0;
  // Least recently used sessions sit at the back: stop at the first one still fresh.
  while (!lru_.empty()) {
    auto it = sessions_.find(lru_.back());
    if (now - it->second.last_used <= options_.idle_ttl_micros) break;
    Drop(it);
    ++stats_.expired_total;
    ++dropped;
  }
  return dropped;
}

void LmContextManager::Drop(std::unordered_map<std::string, Entry>::iterator it) {
  stats_.bytes -= it->second.bytes;
  lru_.erase(it->second.lru);
  sessions_.erase(it);
  stats_.sessions = sessions_.size();
}

void LmContextManager::EvictFor(const std::string& keep) {
  while (stats_.bytes > options_.memory_budget_bytes || sessions_.size() > options_.max_sessions) {
    if (lru_.empty()) return;
    // The least recently used session that is not the one being served.
    auto victim = lru_.end();
    for (auto it = std::prev(lru_.end());; --it) {
      if (*it != keep) {
        victim = it;
        break;
      }
      if (it == lru_.begin()) break;
    }
    if (victim == lru_.end()) return;  // only `keep` is left
    Drop(sessions_.find(*victim));
    ++stats_.evicted_total;
  }
}

}  // namespace cleave::cloud

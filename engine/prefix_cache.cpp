// Prefix reuse across requests. See prefix_cache.h.
#include "engine/prefix_cache.h"

#include <algorithm>

#include "engine/errors.h"

namespace hyco {

PrefixCache::~PrefixCache() { clear(); }

void PrefixCache::put(SeqId seq, std::vector<int32_t> tokens) {
  HYCO_ASSERT(kv_.is_live(seq) && int32_t(tokens.size()) == kv_.length(seq));
  entries_.push_front(Entry{seq, std::move(tokens)});
}

std::optional<PrefixCache::Hit> PrefixCache::take(std::span<const int32_t> prompt, int32_t min_reuse) {
  auto best = entries_.end();
  int32_t best_n = 0;
  const int32_t limit = int32_t(prompt.size()) - 1;
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    const auto& t = it->tokens;
    int32_t common = int32_t(std::mismatch(t.begin(), t.end(), prompt.begin(), prompt.end()).first - t.begin());
    int32_t n = std::min(common, limit);
    if (n < kv_.min_length(it->seq)) continue;  // the ring no longer holds what that needs
    if (n > best_n) {
      best_n = n;
      best = it;
    }
  }
  if (best == entries_.end() || best_n < std::max(min_reuse, 1)) return std::nullopt;
  Hit h{best->seq, best_n};
  kv_.truncate(h.seq, best_n);
  entries_.erase(best);
  return h;
}

bool PrefixCache::evict_one() {
  if (entries_.empty()) return false;
  kv_.release(entries_.back().seq);
  entries_.pop_back();
  return true;
}

void PrefixCache::clear() {
  while (evict_one()) {
  }
}

int64_t PrefixCache::n_blocks_held() const {
  int64_t n = 0;
  for (const auto& e : entries_) n += kv_.n_blocks(e.seq);
  return n;
}

int64_t PrefixCache::n_tokens_cached() const {
  int64_t n = 0;
  for (const auto& e : entries_) n += int64_t(e.tokens.size());
  return n;
}

}  // namespace hyco

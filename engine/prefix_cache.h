// Finished sequences kept with their KV for reuse (DESIGN.md "Reuse"): a new prompt takes the
// cached sequence with the longest common token prefix that its cache can still be rolled back
// to, so an IDE request after a few keystrokes recomputes only what changed. LRU eviction.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <vector>

#include "engine/kv_cache.h"

namespace hyco {

class PrefixCache {
 public:
  explicit PrefixCache(KvCache& kv) : kv_(kv) {}
  ~PrefixCache();

  // Keeps `seq` (now owned by the cache); `tokens` are exactly the tokens its KV holds.
  void put(SeqId seq, std::vector<int32_t> tokens);

  struct Hit {
    SeqId seq = -1;
    int32_t n_reused = 0;  // the sequence now holds prompt[0, n_reused)
  };
  // Removes and returns the entry that can serve the longest prefix of `prompt` — at most
  // prompt.size() - 1 tokens, so the last prompt token is recomputed for its logits — truncated
  // to that prefix. nullopt when no entry can restore at least min_reuse tokens.
  std::optional<Hit> take(std::span<const int32_t> prompt, int32_t min_reuse = 1);

  // Releases the least recently used entry's KV; false when the cache is empty.
  bool evict_one();
  void clear();
  size_t size() const { return entries_.size(); }
  // Tokens held by all entries together.
  int64_t n_tokens_cached() const;
  // Global KV blocks the cached sequences hold (what evicting all of them would free).
  int64_t n_blocks_held() const;

 private:
  struct Entry {
    SeqId seq;
    std::vector<int32_t> tokens;
  };
  KvCache& kv_;
  std::list<Entry> entries_;  // most recently used first
};

}  // namespace hyco

// Stop strings and n_indent over a stream of text deltas. See text_stream.h.
#include "engine/text_stream.h"

#include <algorithm>

namespace hyco {

TextStream::TextStream(const Tokenizer* tok, std::vector<std::string> stop_strings, int32_t n_indent)
    : stops_(std::move(stop_strings)), n_indent_(n_indent) {
  if (tok) detok_.emplace(*tok);
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

TextStream::Step TextStream::push(int32_t token) {
  if (!detok_ || stopped_) return {};
  pending_ += detok_->push(token);
  return emit_safe();
}

// Emits what can no longer become part of a stop string or an over-dedented line.
TextStream::Step TextStream::emit_safe() {
  Step s;
  // 1. A complete stop string: everything before it is the final text.
  size_t cut = std::string::npos;
  for (const auto& w : stops_) {
    size_t pos = pending_.find(w);
    if (pos != std::string::npos && (cut == std::string::npos || pos < cut)) {
      cut = pos;
      s.stop_word = w;
    }
  }
  if (cut != std::string::npos) {
    pending_.resize(cut);
    s.stop = true;
  }
  // 2. n_indent (llama.cpp): once a newline was generated, a line whose first non-blank character
  //    is indented less than n_indent ends the generation; that line is dropped. Lines opened
  //    earlier were judged when their first character arrived (their blanks are held until then).
  if (n_indent_ > 0) {
    std::vector<size_t> starts;
    if (!text_.empty() && text_.back() == '\n') starts.push_back(0);
    for (size_t p = pending_.find('\n'); p != std::string::npos; p = pending_.find('\n', p + 1)) starts.push_back(p + 1);
    for (size_t line : starts) {
      size_t j = line;
      while (j < pending_.size() && (pending_[j] == ' ' || pending_[j] == '\t')) ++j;
      if (j < pending_.size() && pending_[j] != '\n' && int64_t(j - line) < n_indent_) {
        pending_.resize(line);
        s.stop = true;
        s.stop_word.clear();
        break;
      }
    }
  }
  if (s.stop) {
    stopped_ = true;
    s.text = std::move(pending_);
    pending_.clear();
  } else {
    // 3. Hold back the longest tail that could still grow into a stop string, and, with
    //    n_indent, the blanks that open a line after a newline (the line may yet be dropped).
    size_t hold = 0;
    for (const auto& w : stops_)
      for (size_t k = std::min(w.size() - 1, pending_.size()); k > hold; --k)
        if (pending_.compare(pending_.size() - k, k, w, 0, k) == 0) {
          hold = k;
          break;
        }
    if (n_indent_ > 0) {
      size_t nl = pending_.rfind('\n');
      bool line_open = nl != std::string::npos || (!text_.empty() && text_.back() == '\n');
      size_t line = nl == std::string::npos ? 0 : nl + 1;
      if (line_open && pending_.find_first_not_of(" \t", line) == std::string::npos)
        hold = std::max(hold, pending_.size() - line);
    }
    s.text = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
  }
  if (s.text.find('\n') != std::string::npos) has_newline_ = true;
  text_ += s.text;
  return s;
}

std::string TextStream::finish() {
  if (!detok_ || stopped_) return {};
  pending_ += detok_->flush();
  // The flushed U+FFFD of an unfinished character is text like any other: the stop strings and
  // n_indent apply to it too.
  std::string out = emit_safe().text;
  if (stopped_) return out;
  // A line of only blanks at the end is real text, and so is an unfinished stop-string prefix.
  out += pending_;
  text_ += pending_;
  if (pending_.find('\n') != std::string::npos) has_newline_ = true;
  pending_.clear();
  return out;
}

}  // namespace hyco

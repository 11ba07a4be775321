#include "common/tokenizer/text_stream.h"

#include <algorithm>

namespace wq {

TextStream::TextStream(const Tokenizer& tokenizer, bool at_sequence_start,
                       std::vector<std::string> stop_sequences)
    : detokenizer_(tokenizer, at_sequence_start),
      stop_sequences_(std::move(stop_sequences)) {
  stop_sequences_.erase(std::remove(stop_sequences_.begin(), stop_sequences_.end(), ""),
                        stop_sequences_.end());
}

size_t TextStream::HeldBackSuffix() const {
  // Longest suffix of pending_ that is a proper prefix of a stop sequence.
  size_t held = 0;
  for (const std::string& stop : stop_sequences_) {
    for (size_t len = std::min(stop.size() - 1, pending_.size()); len > held; --len) {
      if (pending_.compare(pending_.size() - len, len, stop, 0, len) == 0) {
        held = len;
        break;
      }
    }
  }
  return held;
}

TextStream::Step TextStream::Append(int token_id) {
  Step step;
  if (stopped_) {
    step.stopped = true;
    return step;
  }
  pending_ += detokenizer_.Push(token_id);
  // The earliest stop sequence wins; text before it becomes visible.
  size_t first = std::string::npos;
  for (const std::string& stop : stop_sequences_) {
    first = std::min(first, pending_.find(stop));
  }
  if (first != std::string::npos) {
    step.text = pending_.substr(0, first);
    step.stopped = stopped_ = true;
    pending_.clear();
  } else {
    const size_t visible = pending_.size() - HeldBackSuffix();
    step.text = pending_.substr(0, visible);
    pending_.erase(0, visible);
  }
  visible_ += step.text;
  return step;
}

std::string TextStream::Finish() {
  if (stopped_) return "";
  std::string rest = pending_ + detokenizer_.Flush();
  pending_.clear();
  stopped_ = true;
  visible_ += rest;
  return rest;
}

}  // namespace wq

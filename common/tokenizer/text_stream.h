// Generated token ids -> the text a client may see, token by token: valid
// UTF-8 only, and never any part of a stop sequence (text that could still
// become one is held back until it cannot).
#ifndef WQ_COMMON_TEXT_STREAM_H_
#define WQ_COMMON_TEXT_STREAM_H_

#include <string>
#include <vector>

#include "common/tokenizer/tokenizer.h"

namespace wq {

class TextStream {
 public:
  // at_sequence_start: the first generated piece starts the text (empty
  // prompt), so its SentencePiece word-boundary space is dropped.
  TextStream(const Tokenizer& tokenizer, bool at_sequence_start,
             std::vector<std::string> stop_sequences);

  struct Step {
    std::string text;     // newly visible text
    bool stopped = false; // a stop sequence completed; the stream is over
  };
  Step Append(int token_id);
  // Ends the stream: everything held back that is not a stop sequence.
  std::string Finish();

  // The visible text so far (excludes any stop sequence).
  const std::string& text() const { return visible_; }

 private:
  size_t HeldBackSuffix() const;

  StreamingDetokenizer detokenizer_;
  std::vector<std::string> stop_sequences_;
  std::string pending_;  // decoded but not yet visible
  std::string visible_;
  bool stopped_ = false;
};

}  // namespace wq

#endif  // WQ_COMMON_TEXT_STREAM_H_

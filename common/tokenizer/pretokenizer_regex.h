// Pre-tokenization of byte-level BPE tokenizers: the split regexes of the
// families wq serves (one table entry each) and GPT-2's byte <-> character
// alphabet that vocab.json / tokenizer.json spell byte-level tokens in.
#ifndef WQ_COMMON_PRETOKENIZER_REGEX_H_
#define WQ_COMMON_PRETOKENIZER_REGEX_H_

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace wq {

enum class PretokenizerPattern { kGpt2, kLlama3, kQwen2 };

// One compiled split regex (PCRE2, UTF + UCP, JIT when available). Instances
// live for the whole process; Get/Find compile each pattern once.
class PretokenizerRegex {
 public:
  static const PretokenizerRegex& Get(PretokenizerPattern pattern);
  // The entry whose regex is exactly `regex` as a tokenizer.json Split
  // pre-tokenizer writes it; nullptr when the table has none.
  static const PretokenizerRegex* Find(std::string_view regex);

  std::string_view regex() const { return regex_; }

  // Appends the pieces of `text`, in order, covering it exactly: each match
  // and each stretch between matches (HF Split, behavior Isolated).
  // INVALID_ARGUMENT when text is not valid UTF-8. Thread-safe.
  absl::Status Split(std::string_view text,
                     std::vector<std::string_view>* pieces) const;

  PretokenizerRegex(const PretokenizerRegex&) = delete;
  PretokenizerRegex& operator=(const PretokenizerRegex&) = delete;

 private:
  PretokenizerRegex(const char* name, const char* regex);
  // Indexed by PretokenizerPattern.
  static const PretokenizerRegex* const* All();

  const char* name_;  // for error messages
  const char* regex_;
  void* code_;  // pcre2_code_8; never freed (process lifetime)
};

// GPT-2's bytes_to_unicode(): every byte as the UTF-8 of a printable
// character, so that BPE vocabularies can be stored as JSON text.
const std::array<std::string, 256>& ByteLevelAlphabet();

// Byte-level spelling -> raw bytes; false when `text` has a character
// outside the 256-character alphabet (then *bytes is unspecified).
bool ByteLevelToBytes(std::string_view text, std::string* bytes);

}  // namespace wq

#endif  // WQ_COMMON_PRETOKENIZER_REGEX_H_

#include "common/tokenizer/pretokenizer_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace wq {
namespace {

struct PatternEntry {
  PretokenizerPattern pattern;
  const char* name;
  const char* regex;
};

// Written exactly as the families' tokenizer.json files (and transformers'
// converters) spell them, so Find() recognises a Split pre-tokenizer.
constexpr PatternEntry kPatterns[] = {
    // GPT-2's encoder.py; also ByteLevel's built-in regex (use_regex: true).
    {PretokenizerPattern::kGpt2, "gpt2",
     R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"},
    // Meta's llama/tokenizer.py: case-insensitive contractions, digits in
    // groups of up to three.
    {PretokenizerPattern::kLlama3, "llama3",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
    // Qwen2Converter: as Llama 3 but one digit per piece.
    {PretokenizerPattern::kQwen2, "qwen2",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
};
constexpr int kNumPatterns = sizeof(kPatterns) / sizeof(kPatterns[0]);

// Highest character of the byte-level alphabet: 0x100 + the 68 bytes that
// are not printable Latin-1.
constexpr int kMaxAlphabetChar = 0x143;

struct Alphabet {
  std::array<std::string, 256> spelling;
  std::array<int16_t, kMaxAlphabetChar + 1> byte_of;  // -1: not in alphabet
};

const Alphabet& GetAlphabet() {
  static const Alphabet* alphabet = [] {
    auto* a = new Alphabet;
    a->byte_of.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') ||
                             (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const int cp = printable ? b : next++;
      a->byte_of[cp] = static_cast<int16_t>(b);
      if (cp < 0x80) {
        a->spelling[b] = std::string(1, static_cast<char>(cp));
      } else {
        a->spelling[b] = {static_cast<char>(0xC0 | (cp >> 6)),
                          static_cast<char>(0x80 | (cp & 0x3F))};
      }
    }
    return a;
  }();
  return *alphabet;
}

}  // namespace

PretokenizerRegex::PretokenizerRegex(const char* name, const char* regex)
    : name_(name), regex_(regex) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(regex), PCRE2_ZERO_TERMINATED,
                    PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  // The table is fixed at build time: a pattern that does not compile is a
  // programming error, caught by the first test.
  if (code == nullptr) {
    std::fprintf(stderr, "pre-tokenizer regex %s: error %d at offset %zu\n",
                 name, error, static_cast<size_t>(offset));
    std::abort();
  }
  // Without JIT support (some architectures) pcre2_match interprets.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  code_ = code;
}

const PretokenizerRegex& PretokenizerRegex::Get(PretokenizerPattern pattern) {
  return *All()[static_cast<int>(pattern)];
}

const PretokenizerRegex* PretokenizerRegex::Find(std::string_view regex) {
  for (const PatternEntry& e : kPatterns) {
    if (regex == e.regex) return All()[static_cast<int>(e.pattern)];
  }
  return nullptr;
}

absl::Status PretokenizerRegex::Split(
    std::string_view text, std::vector<std::string_view>* pieces) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(code, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  size_t emitted = 0;  // text[0, emitted) is in pieces
  // UTF validity is checked once, on the first match, for the whole subject.
  uint32_t options = 0;
  absl::Status status;
  while (pos < text.size()) {
    const int rc =
        pcre2_match(code, subject, text.size(), pos, options, match, nullptr);
    options = PCRE2_NO_UTF_CHECK;
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      status = absl::InvalidArgumentError(
          absl::StrCat("pre-tokenizer ", name_, ": ",
                       reinterpret_cast<const char*>(message)));
      break;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
    const size_t start = ovector[0];
    size_t end = ovector[1];
    if (start > emitted) pieces->push_back(text.substr(emitted, start - emitted));
    if (end == start) {
      // None of the table's patterns matches empty; step over one character
      // anyway rather than loop.
      ++end;
      while (end < text.size() && (text[end] & 0xC0) == 0x80) ++end;
    } else {
      pieces->push_back(text.substr(start, end - start));
    }
    emitted = end == start ? start : end;
    pos = end;
  }
  if (status.ok() && emitted < text.size()) pieces->push_back(text.substr(emitted));
  pcre2_match_data_free(match);
  return status;
}

const PretokenizerRegex* const* PretokenizerRegex::All() {
  static const PretokenizerRegex* const* all = [] {
    auto** regexes = new const PretokenizerRegex*[kNumPatterns];
    for (const PatternEntry& e : kPatterns) {
      regexes[static_cast<int>(e.pattern)] =
          new PretokenizerRegex(e.name, e.regex);
    }
    return regexes;
  }();
  return all;
}

const std::array<std::string, 256>& ByteLevelAlphabet() {
  return GetAlphabet().spelling;
}

bool ByteLevelToBytes(std::string_view text, std::string* bytes) {
  const Alphabet& alphabet = GetAlphabet();
  bytes->clear();
  bytes->reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    int cp;
    if (b0 < 0x80) {
      cp = b0;
      i += 1;
    } else if ((b0 & 0xE0) == 0xC0 && i + 1 < text.size() &&
               (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80) {
      cp = ((b0 & 0x1F) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3F);
      i += 2;
    } else {
      return false;  // three- and four-byte characters are never in it
    }
    if (cp > kMaxAlphabetChar || alphabet.byte_of[cp] < 0) return false;
    bytes->push_back(static_cast<char>(alphabet.byte_of[cp]));
  }
  return true;
}

}  // namespace wq

// Byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2/2.5/3) read from Hugging
// Face files: tokenizer.json, or GPT-2-style vocab.json + merges.txt, with
// tokenizer_config.json beside them. Ids equal Hugging Face tokenizers' (and
// tiktoken's) for what is implemented; anything else is refused at load time
// with UNIMPLEMENTED naming the feature, never approximated.
#ifndef WQ_COMMON_BYTE_LEVEL_BPE_H_
#define WQ_COMMON_BYTE_LEVEL_BPE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/file_util.h"
#include "common/pretokenizer_regex.h"

namespace wq {

class ByteLevelBpe {
 public:
  // `tokenizer_config_json` may be empty; it only sets
  // clean_up_tokenization_spaces (default true, as transformers).
  static absl::StatusOr<std::unique_ptr<ByteLevelBpe>> FromTokenizerJson(
      std::string_view tokenizer_json, std::string_view tokenizer_config_json);

  // GPT-2-style files (merges.txt with or without "#version"), configured as
  // transformers' slow tokenizer class named in tokenizer_config.json would:
  // GPT2Tokenizer (also when there is no config) or Qwen2Tokenizer. Added
  // tokens come from its added_tokens_decoder.
  static absl::StatusOr<std::unique_ptr<ByteLevelBpe>> FromVocabMerges(
      std::string_view vocab_json, std::string_view merges_txt,
      std::string_view tokenizer_config_json);

  // `dir`/tokenizer.json, else `dir`/vocab.json + merges.txt; NOT_FOUND when
  // neither is there. Reads `dir`/tokenizer_config.json when present.
  static absl::StatusOr<std::unique_ptr<ByteLevelBpe>> Load(
      const RootedPath& dir);

  // An added_tokens entry (tokenizer.json) or added_tokens_decoder entry
  // (tokenizer_config.json).
  struct AddedToken {
    std::string content;
    int id = 0;
    bool special = false;
    bool lstrip = false;  // swallows whitespace before it
    bool rstrip = false;  // swallows whitespace after it
  };

  ByteLevelBpe(const ByteLevelBpe&) = delete;
  ByteLevelBpe& operator=(const ByteLevelBpe&) = delete;

  // Added tokens written in `text` are always matched (HF's default
  // split_special_tokens=false), on the raw text even when marked
  // "normalized" (the same for the NFC-stable contents families use); add_special_tokens applies the
  // post-processor (e.g. Llama 3's BOS). INVALID_ARGUMENT for text that is
  // not UTF-8. Thread-safe.
  absl::StatusOr<std::vector<int>> Encode(std::string_view text,
                                          bool add_special_tokens) const;

  // transformers' decode(ids, skip_special_tokens=False): bytes of every
  // token, invalid UTF-8 replaced by U+FFFD, then the tokenization-space
  // clean-up if configured. Unknown ids are skipped.
  std::string Decode(absl::Span<const int> ids) const;

  // The bytes a token stands for (an added token's content); "" for unknown
  // ids. May end inside a UTF-8 character.
  std::string_view TokenBytes(int id) const;
  bool IsSpecial(int id) const;
  // One past the highest id.
  int vocab_size() const { return static_cast<int>(token_bytes_.size()); }
  // Ids the post-processor puts before the text (BOS), possibly none.
  const std::vector<int>& prefix_ids() const { return prefix_ids_; }
  // tokenizer_config.json's eos_token (GPT2Tokenizer: <|endoftext|>); -1
  // when not known.
  int eos_id() const { return eos_id_; }

 private:
  struct Merge {
    int rank;
    int id;
  };

  ByteLevelBpe() = default;

  // Shared by both loaders once the files are parsed: `vocab` maps
  // byte-level spellings to ids, `merges` pairs of spellings in rank order.
  absl::Status Build(
      const std::vector<std::pair<std::string, int>>& vocab,
      const std::vector<std::pair<std::string, std::string>>& merges,
      std::vector<AddedToken> added);

  // The id of an added token's content or of a vocabulary entry's raw
  // bytes; -1 when there is none.
  int TokenId(const std::string& content) const;

  // Normalizes, pre-tokenizes and BPE-encodes text free of added tokens.
  absl::Status EncodeSegment(std::string_view segment,
                             std::vector<int>* ids) const;
  void EncodePiece(std::string_view piece, std::vector<int>* ids) const;

  // Configuration (what tokenizer.json or the tokenizer class asked for).
  const PretokenizerRegex* regex_ = nullptr;  // null: a segment is one piece
  bool add_prefix_space_ = false;
  bool nfc_ = false;
  bool ignore_merges_ = false;
  bool clean_up_spaces_ = true;
  std::vector<int> prefix_ids_;
  std::vector<int> suffix_ids_;
  int eos_id_ = -1;

  // Vocabulary.
  std::vector<std::string> token_bytes_;  // by id
  std::vector<bool> special_;             // by id
  absl::flat_hash_map<std::string, int> bpe_ids_;  // raw bytes -> id
  std::array<int, 256> byte_ids_;
  absl::flat_hash_map<uint64_t, Merge> merges_;  // (left id, right id)
  std::vector<AddedToken> added_;
  // added_ indices by first byte of content, longest content first, so the
  // first hit at a position is HF's leftmost-longest match.
  std::array<std::vector<int>, 256> added_by_first_byte_;
};

}  // namespace wq

#endif  // WQ_COMMON_BYTE_LEVEL_BPE_H_

// BPE tokenizers read from a model directory's files, with
// tokenizer_config.json beside them:
//  * Hugging Face tokenizer.json, byte-level (GPT-2, Llama 3, Qwen2/2.5/3:
//    ByteLevel pre-tokenizer and decoder) or SentencePiece-style (Llama 2,
//    Mistral, Phi-3: vocabulary spelled with "▁" for spaces, byte
//    fallback to <0xXX> pieces, Prepend/Replace normalizer or Metaspace
//    pre-tokenizer);
//  * GPT-2-style vocab.json + merges.txt;
//  * tiktoken's tokenizer.model (Meta's Llama 3: "base64(bytes) rank" lines),
//    which has no merges list: pairs merge by the rank of their concatenation.
// All share one merge loop (lowest rank first, leftmost on ties). Ids equal
// Hugging Face tokenizers' (and tiktoken's) for what is implemented; anything
// else is refused at load time with UNIMPLEMENTED naming the feature, never
// approximated.
#ifndef WQ_COMMON_BPE_H_
#define WQ_COMMON_BPE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/io/file_util.h"
#include "common/tokenizer/pretokenizer_regex.h"

namespace wq {

class Bpe {
 public:
  // `tokenizer_config_json` may be empty; it only sets
  // clean_up_tokenization_spaces (default true, as transformers).
  static absl::StatusOr<std::unique_ptr<Bpe>> FromTokenizerJson(
      std::string_view tokenizer_json, std::string_view tokenizer_config_json);

  // GPT-2-style files (merges.txt with or without "#version"), configured as
  // transformers' slow tokenizer class named in tokenizer_config.json would:
  // GPT2Tokenizer (also when there is no config) or Qwen2Tokenizer. Added
  // tokens come from its added_tokens_decoder.
  static absl::StatusOr<std::unique_ptr<Bpe>> FromVocabMerges(
      std::string_view vocab_json, std::string_view merges_txt,
      std::string_view tokenizer_config_json);

  // Meta's tiktoken tokenizer.model as Llama 3 ships it: Llama 3's split
  // regex, special tokens from tokenizer_config.json's added_tokens_decoder
  // (required), BOS from its bos_token unless add_bos_token is false (Meta's
  // and transformers' Llama 3 add it).
  static absl::StatusOr<std::unique_ptr<Bpe>> FromTiktoken(
      std::string_view tokenizer_model, std::string_view tokenizer_config_json);
  // Whether a tokenizer.model's text is tiktoken's (its first line is
  // "base64 rank") rather than a SentencePiece protobuf.
  static bool IsTiktoken(std::string_view tokenizer_model);

  // `dir`/tokenizer.json, else `dir`/vocab.json + merges.txt, else a tiktoken
  // `dir`/tokenizer.model; NOT_FOUND when none is there (a SentencePiece
  // tokenizer.model is Tokenizer's). Reads `dir`/tokenizer_config.json when
  // present.
  static absl::StatusOr<std::unique_ptr<Bpe>> Load(
      const RootedPath& dir);

  // An added_tokens entry (tokenizer.json) or added_tokens_decoder entry
  // (tokenizer_config.json).
  struct AddedToken {
    std::string content;
    int id = 0;
    bool special = false;
    bool lstrip = false;  // swallows whitespace before it
    bool rstrip = false;  // swallows whitespace after it
    bool normalized = false;  // HF matches it in the normalized text
  };

  // Parsed tokenizer.json configuration (public for the parsing helpers).
  // One normalizer of tokenizer.json, in the order they apply.
  struct NormalizerStep {
    enum class Kind { kNfc, kPrepend, kReplace } kind;
    std::string text;         // what Prepend adds, what Replace looks for
    std::string replacement;  // Replace's content
  };
  // tokenizer.json's Metaspace pre-tokenizer.
  struct Metaspace {
    enum class Prepend { kAlways, kFirst, kNever } prepend;
    bool split = true;
  };

  Bpe(const Bpe&) = delete;
  Bpe& operator=(const Bpe&) = delete;

  // Added tokens written in `text` are always matched (HF's default
  // split_special_tokens=false), on the raw text even when marked
  // "normalized" (the same for the NFC-stable contents families use; such
  // tokens under a Prepend/Replace normalizer are refused at load);
  // add_special_tokens applies the post-processor (e.g. Llama 3's BOS). INVALID_ARGUMENT for text that is
  // not UTF-8. Thread-safe.
  absl::StatusOr<std::vector<int>> Encode(std::string_view text,
                                          bool add_special_tokens) const;

  // transformers' decode(ids, skip_special_tokens=False): bytes of every
  // token, invalid UTF-8 replaced by U+FFFD, then the tokenization-space
  // clean-up if configured. Unknown ids are skipped.
  std::string Decode(absl::Span<const int> ids) const;

  // The bytes a token stands for (an added token's content; SentencePiece-
  // style: "▁" decoded to a space, a <0xXX> piece its byte); "" for
  // unknown ids. May end inside a UTF-8 character.
  std::string_view TokenBytes(int id) const;
  // The token as its vocabulary spells it ("▁Hello", "<0x0A>"); for
  // byte-level and tiktoken vocabularies, its bytes.
  std::string_view Piece(int id) const;
  bool IsSpecial(int id) const;
  // Whether the token stands for raw bytes that may begin or end inside a
  // UTF-8 character: every byte-level and tiktoken token that is not an
  // added token, a SentencePiece-style byte-fallback piece.
  bool IsByteToken(int id) const;
  // Leading spaces the decoder strips from a text (SentencePiece-style: the
  // one its normalizer or Metaspace prepended); 0 for byte-level.
  int decoder_strips_leading_spaces() const { return strip_leading_spaces_; }
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

  Bpe() = default;

  // Shared by all loaders once the files are parsed: `vocab` maps pieces
  // (raw bytes, or SentencePiece-style text) to ids, `merges` pairs of pieces
  // in rank order.
  absl::Status Build(
      const std::vector<std::pair<std::string, int>>& vocab,
      const std::vector<std::pair<std::string, std::string>>& merges,
      std::vector<AddedToken> added);
  // tiktoken's rule as merges: every split of a token into two tokens merges
  // into it, ranked by the token's rank (its id).
  void DeriveMergesFromRanks();

  // The id of an added token's content or of a vocabulary entry's raw
  // bytes; -1 when there is none.
  int TokenId(const std::string& content) const;

  // Normalizes, pre-tokenizes and BPE-encodes text free of added tokens;
  // at_text_start: the segment begins the text (Metaspace "first").
  absl::Status EncodeSegment(std::string_view segment, bool at_text_start,
                             std::vector<int>* ids) const;
  void EncodePiece(std::string_view piece, std::vector<int>* ids) const;
  // A piece's symbols before merging: one per byte (byte-level), or one per
  // character with byte fallback / unknown (SentencePiece-style).
  void InitialSymbols(std::string_view piece, std::vector<int>* symbols) const;
  // Metaspace: spaces to \u2581, the prepended one, a piece per word.
  absl::Status EncodeMetaspace(std::string_view segment, bool at_text_start,
                               std::vector<int>* ids) const;
  // Makes the post-processor put `bos_token` before the text.
  absl::Status SetBos(const std::string& bos_token);

  // Configuration (what tokenizer.json or the tokenizer class asked for).
  bool sentencepiece_style_ = false;  // else byte-level (or tiktoken)
  std::vector<NormalizerStep> normalizer_;
  const PretokenizerRegex* regex_ = nullptr;  // null: a segment is one piece
  bool add_prefix_space_ = false;
  std::optional<Metaspace> metaspace_;
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  std::string unk_token_;
  int unk_id_ = -1;
  int strip_leading_spaces_ = 0;
  bool clean_up_spaces_ = true;
  std::vector<int> prefix_ids_;
  std::vector<int> suffix_ids_;
  int eos_id_ = -1;

  // Vocabulary.
  std::vector<std::string> token_bytes_;  // by id: what it decodes to
  std::vector<std::string> pieces_;       // by id: vocabulary spelling
  std::vector<bool> special_;             // by id
  std::vector<bool> byte_token_;          // by id: IsByteToken
  absl::flat_hash_map<std::string, int> bpe_ids_;  // piece -> id
  // The token of each byte (byte-level), or its <0xXX> piece (byte
  // fallback); -1 when there is none.
  std::array<int, 256> byte_ids_;
  absl::flat_hash_map<uint64_t, Merge> merges_;  // (left id, right id)
  std::vector<AddedToken> added_;
  // added_ indices by first byte of content, longest content first, so the
  // first hit at a position is HF's leftmost-longest match.
  std::array<std::vector<int>, 256> added_by_first_byte_;
};

}  // namespace wq

#endif  // WQ_COMMON_BPE_H_

// Text <-> token ids for the models wq serves, from whichever tokenizer files
// a Hugging Face model directory holds (LoadModelDir): tokenizer.json, else
// vocab.json + merges.txt, else a tiktoken tokenizer.model (all BPE,
// common/tokenizer/bpe.h), else a SentencePiece tokenizer.model, reached through
// libwq_spm_shim.so (see
// sentencepiece_shim.h for why it is dlopen'ed rather than linked).
//
// The shim is found at run time, in this order: $WQ_SPM_SHIM; next to the
// executable; $RUNFILES_DIR, $TEST_SRCDIR or <executable>.runfiles under
// wq/common/tokenizer/libwq_spm_shim.so. //common/tokenizer:tokenizer lists the shim as data, so
// Bazel targets depending on it get it in their runfiles.
#ifndef WQ_COMMON_TOKENIZER_H_
#define WQ_COMMON_TOKENIZER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/io/file_util.h"

namespace wq {

class Tokenizer {
 public:
  // How a piece turns into text, precomputed per id. kByte: raw bytes that
  // may begin or end inside a UTF-8 character (a SentencePiece <0xXX> piece,
  // every byte-level BPE token). kControl: no text (SentencePiece BOS/EOS,
  // BPE special tokens).
  enum class PieceKind { kNormal, kByte, kControl, kUnknown };

  // The model is opened by OpenForRead (its rules and errors);
  // INVALID_ARGUMENT when it is not a sentencepiece model,
  // FAILED_PRECONDITION when the shim is not found.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const RootedPath& model);

  // The tokenizer of a model directory: tokenizer.json, else vocab.json +
  // merges.txt, else tokenizer.model, tiktoken's or SentencePiece's as its
  // content says (NOT_FOUND when none is there).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadModelDir(
      const RootedPath& dir);

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  virtual ~Tokenizer() = default;

  // Thread-safe. add_bos: the tokenizer's own prefix (SentencePiece BOS, a
  // BPE post-processor's template, which may add nothing).
  virtual absl::StatusOr<std::vector<int>> Encode(std::string_view text,
                                                  bool add_bos) const = 0;
  // Skips control ids like sentencepiece; SentencePiece decodes ids outside
  // [0, vocab) as the unknown piece, BPE skips them. Equals what a
  // StreamingDetokenizer starting the sequence emits for the same ids.
  virtual std::string Decode(absl::Span<const int> ids) const = 0;

  // -1 when the tokenizer has none.
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int unk_id() const { return unk_id_; }
  int vocab_size() const { return vocab_size_; }

  // Raw piece text, e.g. "▁Once" or "<0x0A>" (BPE: the token's bytes); ""
  // when id is out of range.
  virtual std::string_view Piece(int id) const = 0;
  // kUnknown when id is out of range.
  virtual PieceKind Kind(int id) const = 0;
  // Bytes the piece stands for on its own: "▁" becomes a space, a byte piece
  // its raw byte, a control piece nothing, the unknown piece " ⁇ ". Out of
  // range ids give the unknown surface.
  virtual std::string_view Surface(int id) const = 0;

 protected:
  Tokenizer() = default;

  int vocab_size_ = 0;
  int bos_id_ = -1;
  int eos_id_ = -1;
  int unk_id_ = -1;
};

// Turns generated ids into UTF-8 text one token at a time, never emitting a
// partial UTF-8 sequence: byte-fallback pieces such as <0xE4><0xB8><0x96>
// arrive one per token. Concatenated output equals Tokenizer::Decode of the
// same ids. Not thread-safe; the tokenizer must outlive it.
class StreamingDetokenizer {
 public:
  // at_sequence_start: drop the leading space of the first piece
  // (sentencepiece's dummy prefix), as Decode does for a whole text. For a
  // continuation after a prompt pass false, so ", there was" keeps its spaces.
  StreamingDetokenizer(const Tokenizer& tok, bool at_sequence_start);

  // Text completed by this token: "" while a multi-byte character is
  // incomplete and for control ids. Bytes that can never complete a character
  // come out as U+FFFD, one per byte, as in sentencepiece's Decode.
  std::string Push(int id);
  // Pending incomplete bytes as U+FFFD (one per byte); resets the state.
  std::string Flush();

 private:
  // Moves complete characters (and U+FFFD for invalid bytes) from pending_
  // to out; with `final`, incomplete tails become U+FFFD too.
  void Drain(bool final, std::string* out);

  const Tokenizer& tok_;
  bool strip_leading_space_;
  std::string pending_;
};

}  // namespace wq

#endif  // WQ_COMMON_TOKENIZER_H_

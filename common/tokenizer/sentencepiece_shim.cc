// The only translation unit that includes sentencepiece_processor.h. It must
// not include any Abseil or gRPC header (the sentencepiece header declares
// namespace absl { using std::string_view; }, which clashes with Abseil).
#include "common/tokenizer/sentencepiece_shim.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

struct WqSpm {
  sentencepiece::SentencePieceProcessor processor;
  int vocab_size = 0;
};

namespace {

// sentencepiece's default rendering of <unk>, " ⁇ ".
constexpr char kUnknownSurface[] = " \xE2\x81\x87 ";

char* CopyString(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

bool InRange(const WqSpm* spm, int id) {
  return spm != nullptr && id >= 0 && id < spm->vocab_size;
}

}  // namespace

// Exceptions must not cross the C boundary, hence the catch-alls below.
extern "C" {

WqSpm* wq_spm_load(const char* path, int* error_code, char** error) {
  try {
    auto* spm = new WqSpm;
    const auto status = spm->processor.Load(path);
    if (!status.ok()) {
      *error_code = static_cast<int>(status.code());
      *error = CopyString(status.ToString());
      delete spm;
      return nullptr;
    }
    spm->vocab_size = spm->processor.GetPieceSize();
    return spm;
  } catch (const std::exception& e) {
    *error_code = 13;  // INTERNAL
    *error = CopyString(e.what());
    return nullptr;
  }
}

void wq_spm_free(WqSpm* spm) { delete spm; }

void wq_spm_free_string(char* s) { std::free(s); }

int wq_spm_vocab_size(const WqSpm* spm) { return spm->vocab_size; }
int wq_spm_bos_id(const WqSpm* spm) { return spm->processor.bos_id(); }
int wq_spm_eos_id(const WqSpm* spm) { return spm->processor.eos_id(); }
int wq_spm_unk_id(const WqSpm* spm) { return spm->processor.unk_id(); }
int wq_spm_pad_id(const WqSpm* spm) { return spm->processor.pad_id(); }

long wq_spm_encode(const WqSpm* spm, const char* text, size_t len, int* out,
                   size_t capacity) {
  try {
    std::vector<int> ids;
    if (!spm->processor.Encode(std::string_view(text, len), &ids).ok()) {
      return -1;
    }
    // Not memcpy: ids.data() is null when there are none (empty text).
    std::copy_n(ids.begin(), std::min(ids.size(), capacity), out);
    return static_cast<long>(ids.size());
  } catch (const std::exception&) {
    return -1;
  }
}

long wq_spm_decode(const WqSpm* spm, const int* ids, size_t num_ids, char* out,
                   size_t capacity) {
  try {
    for (size_t i = 0; i < num_ids; ++i) {
      if (!InRange(spm, ids[i])) return -1;
    }
    // Unknown ids are passed as the literal default surface: sentencepiece
    // emits a piece that is not in the vocabulary verbatim. The model's own
    // trainer_spec.unk_surface is not trusted because the bundled stories260K
    // model stores it text-format escaped (" \\342\\201\\207 ").
    std::vector<std::string> pieces;
    pieces.reserve(num_ids);
    for (size_t i = 0; i < num_ids; ++i) {
      pieces.push_back(spm->processor.IsUnknown(ids[i])
                           ? kUnknownSurface
                           : spm->processor.IdToPiece(ids[i]));
    }
    std::string text;
    if (!spm->processor.Decode(pieces, &text).ok()) return -1;
    if (capacity > 0) {
      std::memcpy(out, text.data(), std::min(text.size(), capacity));
    }
    return static_cast<long>(text.size());
  } catch (const std::exception&) {
    return -1;
  }
}

const char* wq_spm_piece(const WqSpm* spm, int id, size_t* len) {
  if (!InRange(spm, id)) {
    *len = 0;
    return nullptr;
  }
  const std::string& piece = spm->processor.IdToPiece(id);
  *len = piece.size();
  return piece.data();
}

int wq_spm_is_byte(const WqSpm* spm, int id) {
  return InRange(spm, id) && spm->processor.IsByte(id);
}

int wq_spm_is_control(const WqSpm* spm, int id) {
  return InRange(spm, id) && spm->processor.IsControl(id);
}

int wq_spm_is_unknown(const WqSpm* spm, int id) {
  return InRange(spm, id) && spm->processor.IsUnknown(id);
}

}  // extern "C"

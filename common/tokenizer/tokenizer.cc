#include "common/tokenizer/tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/tokenizer/bpe.h"
#include "common/tokenizer/sentencepiece_shim.h"
#include "common/io/status_macros.h"

namespace wq {

struct SpmShimApi {
  decltype(&wq_spm_load) load;
  decltype(&wq_spm_free) free;
  decltype(&wq_spm_free_string) free_string;
  decltype(&wq_spm_vocab_size) vocab_size;
  decltype(&wq_spm_bos_id) bos_id;
  decltype(&wq_spm_eos_id) eos_id;
  decltype(&wq_spm_unk_id) unk_id;
  decltype(&wq_spm_encode) encode;
  decltype(&wq_spm_decode) decode;
  decltype(&wq_spm_piece) piece;
  decltype(&wq_spm_is_byte) is_byte;
  decltype(&wq_spm_is_control) is_control;
  decltype(&wq_spm_is_unknown) is_unknown;
};

namespace {

constexpr char kShimName[] = "libwq_spm_shim.so";
constexpr char kShimRunfilesPath[] = "/wq/common/tokenizer/libwq_spm_shim.so";
// sentencepiece's default surface for <unk>.
constexpr char kUnknownSurface[] = " \xE2\x81\x87 ";
constexpr char kSpaceSymbol[] = "\xE2\x96\x81";  // U+2581 "▁"
constexpr char kReplacementChar[] = "\xEF\xBF\xBD";  // U+FFFD

std::string ExecutablePath() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, n) : std::string();
}

// argv[0] as typed, which differs from /proc/self/exe when the binary was
// started through a symlink whose .runfiles sits beside the link.
std::string Argv0() {
  std::ifstream cmdline("/proc/self/cmdline", std::ios::binary);
  std::string argv0;
  std::getline(cmdline, argv0, '\0');
  return argv0;
}

std::vector<std::string> ShimCandidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("WQ_SPM_SHIM"); env && *env) {
    paths.push_back(env);
  }
  const std::string exe = ExecutablePath();
  if (const auto slash = exe.rfind('/'); slash != std::string::npos) {
    paths.push_back(exe.substr(0, slash + 1) + kShimName);
  }
  for (const char* var : {"RUNFILES_DIR", "TEST_SRCDIR"}) {
    if (const char* dir = std::getenv(var); dir && *dir) {
      paths.push_back(std::string(dir) + kShimRunfilesPath);
    }
  }
  if (!exe.empty()) paths.push_back(exe + ".runfiles" + kShimRunfilesPath);
  const std::string argv0 = Argv0();
  if (!argv0.empty() && argv0 != exe) {
    paths.push_back(argv0 + ".runfiles" + kShimRunfilesPath);
  }
  return paths;
}

template <typename F>
absl::Status Bind(void* lib, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  if (*fn == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("sentencepiece shim lacks symbol ", name));
  }
  return absl::OkStatus();
}

// Loads the shim so that sentencepiece's bundled protobuf-lite and the
// process's libprotobuf never see each other's symbols, in either direction.
void* LoadIsolated(const std::string& path) {
#ifdef WQ_SPM_SHIM_DLMOPEN
  // Sanitizer builds (.bazelrc): the sanitizer runtimes refuse RTLD_DEEPBIND,
  // so the shim gets a link-map namespace of its own, with its own libstdc++
  // and libc and no libprotobuf. Memory never crosses the boundary: the shim
  // frees what it allocates and hands out only borrowed pointers.
  return dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
#else
  // RTLD_LOCAL keeps sentencepiece's symbols out of the process; RTLD_DEEPBIND
  // makes sentencepiece bind its own protobuf-lite before the process's.
  return dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
#endif
}

absl::StatusOr<SpmShimApi> OpenShim() {
  std::vector<std::string> tried;
  for (const std::string& path : ShimCandidates()) {
    if (access(path.c_str(), R_OK) != 0) {
      tried.push_back(path);
      continue;
    }
    void* lib = LoadIsolated(path);
    if (lib == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot load sentencepiece shim ", path, ": ",
                       dlerror()));
    }
    SpmShimApi api;
    absl::Status status;
    for (absl::Status s :
         {Bind(lib, "wq_spm_load", &api.load),
          Bind(lib, "wq_spm_free", &api.free),
          Bind(lib, "wq_spm_free_string", &api.free_string),
          Bind(lib, "wq_spm_vocab_size", &api.vocab_size),
          Bind(lib, "wq_spm_bos_id", &api.bos_id),
          Bind(lib, "wq_spm_eos_id", &api.eos_id),
          Bind(lib, "wq_spm_unk_id", &api.unk_id),
          Bind(lib, "wq_spm_encode", &api.encode),
          Bind(lib, "wq_spm_decode", &api.decode),
          Bind(lib, "wq_spm_piece", &api.piece),
          Bind(lib, "wq_spm_is_byte", &api.is_byte),
          Bind(lib, "wq_spm_is_control", &api.is_control),
          Bind(lib, "wq_spm_is_unknown", &api.is_unknown)}) {
      status.Update(s);
    }
    if (!status.ok()) {
      dlclose(lib);
      return status;
    }
    return api;  // The library stays loaded for the life of the process.
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "sentencepiece shim ", kShimName,
      " not found; set WQ_SPM_SHIM or add data = [\"//common/tokenizer:", kShimName,
      "\"]. Tried: ", absl::StrJoin(tried, ", ")));
}

// Loaded once per process; the result (including a failure) is cached.
const absl::StatusOr<SpmShimApi>& Shim() {
  static const auto* const shim = new absl::StatusOr<SpmShimApi>(OpenShim());
  return *shim;
}

// Length of the UTF-8 character lead byte b starts, 0 if b cannot start one.
int SequenceLength(unsigned char b) {
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

// Whether the i-th byte (i >= 1) after lead byte `lead` may follow; the
// second-byte ranges exclude overlongs, surrogates and code points > U+10FFFF.
bool ValidContinuation(unsigned char lead, int i, unsigned char b) {
  if (i == 1) {
    switch (lead) {
      case 0xE0: return b >= 0xA0 && b <= 0xBF;
      case 0xED: return b >= 0x80 && b <= 0x9F;
      case 0xF0: return b >= 0x90 && b <= 0xBF;
      case 0xF4: return b >= 0x80 && b <= 0x8F;
    }
  }
  return b >= 0x80 && b <= 0xBF;
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  SentencePieceTokenizer(const SpmShimApi* api, void* handle);
  ~SentencePieceTokenizer() override;

  absl::StatusOr<std::vector<int>> Encode(std::string_view text,
                                          bool add_bos) const override;
  std::string Decode(absl::Span<const int> ids) const override;
  std::string_view Piece(int id) const override;
  PieceKind Kind(int id) const override;
  std::string_view Surface(int id) const override;

 private:
  const SpmShimApi* api_;
  void* handle_;
  std::vector<std::string_view> pieces_;
  std::vector<PieceKind> kinds_;
  std::vector<std::string> surfaces_;
};

// Byte tokens (every byte-level / tiktoken token, SentencePiece-style <0xXX>
// pieces) are kByte, other vocabulary pieces kNormal, special tokens
// kControl, so StreamingDetokenizer needs no BPE case. Decode is therefore
// transformers' decode(skip_special_tokens=True) without the space clean-up;
// Bpe::Decode is the faithful one.
class BpeTokenizer : public Tokenizer {
 public:
  explicit BpeTokenizer(std::unique_ptr<Bpe> bpe) : bpe_(std::move(bpe)) {
    vocab_size_ = bpe_->vocab_size();
    if (bpe_->prefix_ids().size() == 1) bos_id_ = bpe_->prefix_ids()[0];
    eos_id_ = bpe_->eos_id();
  }

  absl::StatusOr<std::vector<int>> Encode(std::string_view text,
                                          bool add_bos) const override {
    return bpe_->Encode(text, /*add_special_tokens=*/add_bos);
  }
  std::string Decode(absl::Span<const int> ids) const override {
    // The leading space stripped is the SentencePiece-style decoder's Strip.
    StreamingDetokenizer detokenizer(
        *this, /*at_sequence_start=*/bpe_->decoder_strips_leading_spaces() > 0);
    std::string text;
    for (int id : ids) text += detokenizer.Push(id);
    return text + detokenizer.Flush();
  }
  std::string_view Piece(int id) const override { return bpe_->Piece(id); }
  PieceKind Kind(int id) const override {
    if (id < 0 || id >= vocab_size_) return PieceKind::kUnknown;
    if (bpe_->IsSpecial(id)) return PieceKind::kControl;
    return bpe_->IsByteToken(id) ? PieceKind::kByte : PieceKind::kNormal;
  }
  std::string_view Surface(int id) const override {
    return Kind(id) == PieceKind::kControl ? std::string_view()
                                           : bpe_->TokenBytes(id);
  }

 private:
  std::unique_ptr<Bpe> bpe_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const RootedPath& model) {
  const std::string& model_path = model.path;
  ASSIGN_OR_RETURN(ScopedFd fd, OpenForRead(model));
  const absl::StatusOr<SpmShimApi>& shim = Shim();
  if (!shim.ok()) return shim.status();
  int code = 0;
  char* error = nullptr;
  // sentencepiece opens by name: the name of the descriptor checked above,
  // so that it reads that file and no other.
  const std::string fd_path = absl::StrCat("/proc/self/fd/", fd.get());
  void* handle = shim->load(fd_path.c_str(), &code, &error);
  if (handle == nullptr) {
    const std::string message = error ? error : "unknown error";
    shim->free_string(error);
    if (code == static_cast<int>(absl::StatusCode::kNotFound)) {
      return absl::NotFoundError(absl::StrCat(
          "cannot open tokenizer model ", model_path, ": ", message));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "not a sentencepiece model: ", model_path, ": ", message));
  }
  return std::make_unique<SentencePieceTokenizer>(&*shim, handle);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadModelDir(
    const RootedPath& dir) {
  absl::StatusOr<std::unique_ptr<Bpe>> bpe = Bpe::Load(dir);
  if (bpe.ok()) return std::make_unique<BpeTokenizer>(*std::move(bpe));
  const RootedPath spm_path = dir.Child("tokenizer.model");
  const bool has_spm = access(spm_path.Full().c_str(), F_OK) == 0;
  if (has_spm && absl::IsNotFound(bpe.status())) return Load(spm_path);
  // Llama 2 and Mistral ship a tokenizer.json beside the tokenizer.model it
  // was converted from; when the former uses something Bpe refuses, the
  // latter (if SentencePiece's) serves.
  if (has_spm && absl::IsUnimplemented(bpe.status())) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> spm = Load(spm_path);
    if (spm.ok()) return spm;
    return bpe.status();  // says more than "not a sentencepiece model"
  }
  if (absl::IsNotFound(bpe.status())) {
    return absl::NotFoundError(absl::StrCat(
        dir.path, " has no tokenizer.json, vocab.json + merges.txt or "
             "tokenizer.model"));
  }
  return bpe.status();
}

SentencePieceTokenizer::SentencePieceTokenizer(const SpmShimApi* api,
                                               void* handle)
    : api_(api), handle_(handle) {
  auto* spm = static_cast<WqSpm*>(handle_);
  vocab_size_ = api_->vocab_size(spm);
  bos_id_ = api_->bos_id(spm);
  eos_id_ = api_->eos_id(spm);
  unk_id_ = api_->unk_id(spm);
  pieces_.reserve(vocab_size_);
  kinds_.reserve(vocab_size_);
  surfaces_.reserve(vocab_size_);
  for (int id = 0; id < vocab_size_; ++id) {
    size_t len = 0;
    const char* piece = api_->piece(spm, id, &len);
    pieces_.emplace_back(piece, len);
    if (api_->is_control(spm, id)) {
      kinds_.push_back(PieceKind::kControl);
      surfaces_.emplace_back();
    } else if (api_->is_unknown(spm, id)) {
      kinds_.push_back(PieceKind::kUnknown);
      surfaces_.emplace_back(kUnknownSurface);
    } else if (api_->is_byte(spm, id)) {
      // Byte pieces are spelled "<0xXX>".
      kinds_.push_back(PieceKind::kByte);
      surfaces_.emplace_back(
          1, static_cast<char>(std::strtol(
                 std::string(pieces_.back().substr(3, 2)).c_str(), nullptr,
                 16)));
    } else {
      kinds_.push_back(PieceKind::kNormal);
      // Debian's absl::string_view is not std::string_view.
      surfaces_.push_back(absl::StrReplaceAll(
          absl::string_view(piece, len), {{kSpaceSymbol, " "}}));
    }
  }
}

SentencePieceTokenizer::~SentencePieceTokenizer() {
  api_->free(static_cast<WqSpm*>(handle_));
}

absl::StatusOr<std::vector<int>> SentencePieceTokenizer::Encode(
    std::string_view text, bool add_bos) const {
  std::vector<int> ids;
  const size_t offset = add_bos ? 1 : 0;
  if (add_bos) {
    if (bos_id_ < 0) {
      return absl::FailedPreconditionError("tokenizer model has no BOS piece");
    }
    ids.push_back(bos_id_);
  }
  // Every id covers at least one input byte, except the dummy prefix and
  // what normalization expands, so this usually needs a single call.
  size_t capacity = text.size() + 16;
  for (;;) {
    ids.resize(offset + capacity);
    const long n = api_->encode(static_cast<const WqSpm*>(handle_),
                                text.data(), text.size(),
                                ids.data() + offset, capacity);
    if (n < 0) {
      return absl::InternalError("sentencepiece failed to encode the text");
    }
    if (static_cast<size_t>(n) <= capacity) {
      ids.resize(offset + n);
      return ids;
    }
    capacity = n;
  }
}

std::string SentencePieceTokenizer::Decode(absl::Span<const int> ids) const {
  std::vector<int> valid;
  valid.reserve(ids.size());
  for (int id : ids) {
    if (id >= 0 && id < vocab_size_) {
      valid.push_back(id);
    } else if (unk_id_ >= 0) {
      valid.push_back(unk_id_);
    }
  }
  std::string text(valid.size() * 8 + 16, '\0');
  for (;;) {
    const long n = api_->decode(static_cast<const WqSpm*>(handle_),
                                valid.data(), valid.size(), text.data(),
                                text.size());
    // Every id is in range, so sentencepiece has no reason to fail.
    if (n < 0) return std::string();
    if (static_cast<size_t>(n) <= text.size()) {
      text.resize(n);
      return text;
    }
    text.resize(n);
  }
}

std::string_view SentencePieceTokenizer::Piece(int id) const {
  if (id < 0 || id >= vocab_size_) return {};
  return pieces_[id];
}

Tokenizer::PieceKind SentencePieceTokenizer::Kind(int id) const {
  if (id < 0 || id >= vocab_size_) return PieceKind::kUnknown;
  return kinds_[id];
}

std::string_view SentencePieceTokenizer::Surface(int id) const {
  if (id < 0 || id >= vocab_size_) return kUnknownSurface;
  return surfaces_[id];
}

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tok,
                                           bool at_sequence_start)
    : tok_(tok), strip_leading_space_(at_sequence_start) {}

std::string StreamingDetokenizer::Push(int id) {
  std::string out;
  const Tokenizer::PieceKind kind = tok_.Kind(id);
  if (kind == Tokenizer::PieceKind::kByte) {
    pending_.append(tok_.Surface(id));
    // sentencepiece strips the dummy prefix only while no text precedes it.
    strip_leading_space_ = false;
    Drain(/*final=*/false, &out);
    return out;
  }
  // Like sentencepiece, any other piece ends a run of byte pieces, so an
  // incomplete character before it can no longer complete.
  Drain(/*final=*/true, &out);
  if (kind == Tokenizer::PieceKind::kControl) return out;
  std::string_view surface = tok_.Surface(id);
  if (strip_leading_space_ && kind == Tokenizer::PieceKind::kNormal &&
      tok_.Piece(id).substr(0, 3) == kSpaceSymbol) {
    surface.remove_prefix(1);
  }
  strip_leading_space_ = false;
  out.append(surface);
  return out;
}

std::string StreamingDetokenizer::Flush() {
  std::string out;
  Drain(/*final=*/true, &out);
  return out;
}

void StreamingDetokenizer::Drain(bool final, std::string* out) {
  size_t pos = 0;
  while (pos < pending_.size()) {
    const auto lead = static_cast<unsigned char>(pending_[pos]);
    const int len = SequenceLength(lead);
    int valid = len == 0 ? 0 : 1;
    while (valid > 0 && valid < len && pos + valid < pending_.size() &&
           ValidContinuation(lead, valid,
                             static_cast<unsigned char>(pending_[pos + valid]))) {
      ++valid;
    }
    if (len > 0 && valid == len) {
      out->append(pending_, pos, len);
      pos += len;
    } else if (len > 0 && pos + valid == pending_.size() && !final) {
      break;  // A valid prefix that later bytes may complete.
    } else {
      // One U+FFFD per byte that cannot start a complete character, as
      // sentencepiece's Decode does.
      out->append(kReplacementChar);
      ++pos;
    }
  }
  pending_.erase(0, pos);
}

}  // namespace wq

#include "common/tokenizer/bpe.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <cctype>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "common/io/file_util.h"
#include "common/io/status_macros.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

// Ids index dense tables, so they are capped: one id of 40,000,000 in a
// 500-token file made tables of 40M entries (found by
// fuzz/tokenizer_json_fuzz). The largest vocabularies in use have ~256K.
constexpr int kMaxTokenId = (1 << 21) - 1;

// A JSON token id, or -1 (refused where ids are checked) for anything but an
// integer in [0, kMaxTokenId]: nlohmann's get<int>() of 4e97 is undefined
// behaviour (found by fuzz/tokenizer_json_fuzz).
int JsonTokenId(const nlohmann::json& id) {
  if (id.is_number_unsigned()) {
    return id.get<uint64_t>() <= kMaxTokenId ? static_cast<int>(id.get<uint64_t>()) : -1;
  }
  if (id.is_number_integer()) {
    const int64_t value = id.get<int64_t>();
    return value >= 0 && value <= kMaxTokenId ? static_cast<int>(value) : -1;
  }
  return -1;
}

using Json = nlohmann::json;
using Vocab = std::vector<std::pair<std::string, int>>;
using Merges = std::vector<std::pair<std::string, std::string>>;

absl::Status Unsupported(std::string_view what) {
  return absl::UnimplementedError(absl::StrCat(
      "tokenizer: ", std::string(what),
      " is not supported (wq reads BPE tokenizer.json, byte-level or "
      "SentencePiece-style, vocab.json + merges.txt, and tiktoken or "
      "SentencePiece tokenizer.model)"));
}

bool IsValidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const int64_t n = static_cast<int64_t>(s.size());
  for (int64_t i = 0; i < n;) {
    UChar32 c;
    U8_NEXT(p, i, n, c);
    if (c < 0) return false;
  }
  return true;
}

// Bytes of Unicode White_Space (Rust's char::is_whitespace, which HF's
// lstrip/rstrip use) at the start / end of valid UTF-8 `s`.
size_t LeadingWhitespace(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const int64_t n = static_cast<int64_t>(s.size());
  int64_t i = 0;
  while (i < n) {
    int64_t next = i;
    UChar32 c;
    U8_NEXT(p, next, n, c);
    if (!u_isUWhiteSpace(c)) break;
    i = next;
  }
  return static_cast<size_t>(i);
}

size_t TrailingWhitespace(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  // ICU's U8_PREV takes 32-bit offsets; texts are far below 2 GiB.
  int32_t i = static_cast<int32_t>(s.size());
  while (i > 0) {
    int32_t prev = i;
    UChar32 c;
    U8_PREV(p, 0, prev, c);
    if (!u_isUWhiteSpace(c)) break;
    i = prev;
  }
  return s.size() - static_cast<size_t>(i);
}

const icu::Normalizer2* NfcInstance() {
  UErrorCode error = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(error);
  return U_SUCCESS(error) ? nfc : nullptr;
}

// "" for an absent or null key.
std::string StringField(const Json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : "";
}

bool BoolField(const Json& object, const char* key, bool fallback) {
  auto it = object.find(key);
  return it != object.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

// A special-token entry of tokenizer_config.json: a string or an
// AddedToken object {"content": ...}; "" when absent.
std::string TokenString(const Json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  return it->is_object() ? StringField(*it, "content") : "";
}

absl::StatusOr<Json> ParseJson(std::string_view text, std::string_view what) {
  Json json = Json::parse(text.begin(), text.end(), nullptr,
                          /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), " is not a JSON object"));
  }
  return json;
}

constexpr char kSpaceSymbol[] = "\xE2\x96\x81";  // U+2581, SentencePiece's space
constexpr char kReplacementChar[] = "\xEF\xBF\xBD";  // U+FFFD

// Debian's absl::string_view is not std::string_view.
absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

// A tokenizer.json pattern {"String": s}; nullopt for a Regex pattern.
std::optional<std::string> StringPattern(const Json& pattern) {
  auto it = pattern.find("String");
  if (it == pattern.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

// tokenizer_config.json's text; {} when there is none.
absl::StatusOr<Json> ParseConfig(std::string_view text) {
  if (text.empty()) return Json::object();
  return ParseJson(text, "tokenizer_config.json");
}

absl::Status ParseNormalizer(const Json& normalizer,
                             std::vector<Bpe::NormalizerStep>* steps) {
  if (normalizer.is_null()) return absl::OkStatus();
  using Kind = Bpe::NormalizerStep::Kind;
  const std::string type = StringField(normalizer, "type");
  if (type == "NFC") {
    steps->push_back({Kind::kNfc, "", ""});
    return absl::OkStatus();
  }
  if (type == "Prepend") {
    steps->push_back({Kind::kPrepend, normalizer.at("prepend").get<std::string>(), ""});
    return absl::OkStatus();
  }
  if (type == "Replace") {
    const std::optional<std::string> pattern = StringPattern(normalizer.at("pattern"));
    if (!pattern.has_value() || pattern->empty()) {
      return Unsupported("Replace normalizer with a regex or empty pattern");
    }
    steps->push_back({Kind::kReplace, *pattern, normalizer.at("content").get<std::string>()});
    return absl::OkStatus();
  }
  if (type == "Sequence") {
    for (const Json& n : normalizer.at("normalizers")) {
      RETURN_IF_ERROR(ParseNormalizer(n, steps));
    }
    return absl::OkStatus();
  }
  return Unsupported(absl::StrCat("normalizer ", type));
}

// Metaspace's prepend_scheme, or the older add_prefix_space flag.
absl::StatusOr<Bpe::Metaspace::Prepend> MetaspacePrepend(const Json& metaspace) {
  using Prepend = Bpe::Metaspace::Prepend;
  if (StringField(metaspace, "replacement") != kSpaceSymbol) {
    return Unsupported(absl::StrCat("Metaspace replacement \"",
                                    StringField(metaspace, "replacement"), "\""));
  }
  if (!metaspace.contains("prepend_scheme")) {
    return BoolField(metaspace, "add_prefix_space", true) ? Prepend::kAlways : Prepend::kNever;
  }
  const std::string scheme = StringField(metaspace, "prepend_scheme");
  if (scheme == "always") return Prepend::kAlways;
  if (scheme == "first") return Prepend::kFirst;
  if (scheme == "never") return Prepend::kNever;
  return Unsupported(absl::StrCat("Metaspace prepend_scheme \"", scheme, "\""));
}

absl::Status ParsePreTokenizer(const Json& pre, const PretokenizerRegex** regex,
                               bool* add_prefix_space, bool* byte_level,
                               std::optional<Bpe::Metaspace>* metaspace) {
  const std::string type = StringField(pre, "type");
  if (type == "Sequence") {
    for (const Json& p : pre.at("pretokenizers")) {
      RETURN_IF_ERROR(
          ParsePreTokenizer(p, regex, add_prefix_space, byte_level, metaspace));
    }
    return absl::OkStatus();
  }
  if (*byte_level || metaspace->has_value()) {
    return Unsupported(absl::StrCat("pre-tokenizer ", type,
                                    " after ByteLevel or Metaspace"));
  }
  if (type == "Metaspace") {
    if (*regex != nullptr) return Unsupported("Metaspace after a Split regex");
    ASSIGN_OR_RETURN(const Bpe::Metaspace::Prepend prepend, MetaspacePrepend(pre));
    *metaspace = Bpe::Metaspace{prepend, BoolField(pre, "split", true)};
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    *byte_level = true;
    *add_prefix_space = BoolField(pre, "add_prefix_space", false);
    if (BoolField(pre, "use_regex", true)) {
      if (*regex != nullptr) return Unsupported("two split regexes");
      *regex = &PretokenizerRegex::Get(PretokenizerPattern::kGpt2);
    }
    return absl::OkStatus();
  }
  if (type == "Split") {
    if (StringField(pre, "behavior") != "Isolated" ||
        BoolField(pre, "invert", false)) {
      return Unsupported(absl::StrCat("Split pre-tokenizer with behavior ",
                                      StringField(pre, "behavior"),
                                      " or invert"));
    }
    const Json& pattern = pre.at("pattern");
    if (!pattern.contains("Regex")) {
      return Unsupported("Split pre-tokenizer on a string pattern");
    }
    const std::string source = pattern.at("Regex").get<std::string>();
    const PretokenizerRegex* found = PretokenizerRegex::Find(source);
    if (found == nullptr) {
      return Unsupported(absl::StrCat(
          "Split regex ", source,
          " (known: the GPT-2, Llama 3 and Qwen2 ones in pretokenizer_regex)"));
    }
    if (*regex != nullptr) return Unsupported("two split regexes");
    *regex = found;
    return absl::OkStatus();
  }
  return Unsupported(absl::StrCat("pre-tokenizer ", type));
}

absl::Status ParsePostProcessor(const Json& post, std::vector<int>* prefix,
                                std::vector<int>* suffix) {
  if (post.is_null()) return absl::OkStatus();
  const std::string type = StringField(post, "type");
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type == "Sequence") {
    for (const Json& p : post.at("processors")) {
      RETURN_IF_ERROR(ParsePostProcessor(p, prefix, suffix));
    }
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing") {
    return Unsupported(absl::StrCat("post-processor ", type));
  }
  bool seen_sequence = false;
  for (const Json& item : post.at("single")) {
    if (item.contains("Sequence")) {
      if (seen_sequence || StringField(item.at("Sequence"), "id") != "A") {
        return Unsupported("TemplateProcessing other than specials around $A");
      }
      seen_sequence = true;
      continue;
    }
    const std::string name = StringField(item.at("SpecialToken"), "id");
    for (const Json& id : post.at("special_tokens").at(name).at("ids")) {
      (seen_sequence ? suffix : prefix)->push_back(JsonTokenId(id));
    }
  }
  return absl::OkStatus();
}

// The vocabulary and merges of a BPE model; its flags are the caller's.
absl::Status ParseModel(const Json& model, Vocab* vocab, Merges* merges) {
  const std::string type = StringField(model, "type");
  if (type != "BPE") return Unsupported(absl::StrCat("model type ", type));
  if (!StringField(model, "continuing_subword_prefix").empty() ||
      !StringField(model, "end_of_word_suffix").empty()) {
    return Unsupported("BPE continuing_subword_prefix / end_of_word_suffix");
  }
  auto dropout = model.find("dropout");
  if (dropout != model.end() && !dropout->is_null() &&
      dropout->get<double>() != 0) {
    return Unsupported("BPE dropout");
  }
  for (const auto& [token, id] : model.at("vocab").items()) {
    vocab->emplace_back(token, JsonTokenId(id));
  }
  for (const Json& merge : model.at("merges")) {
    if (merge.is_array()) {
      merges->emplace_back(merge.at(0).get<std::string>(),
                           merge.at(1).get<std::string>());
      continue;
    }
    const std::string line = merge.get<std::string>();
    const size_t space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != line.npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: merge \"", line, "\" is not \"a b\""));
    }
    merges->emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  return absl::OkStatus();
}

// The decoder of a SentencePiece-style tokenizer.json: "\u2581" back to
// spaces (Replace or Metaspace), <0xXX> pieces back to bytes (ByteFallback,
// required exactly when the model falls back to bytes), Fuse, and leading
// spaces stripped from the whole text (Strip after Fuse, or Metaspace, which
// strips the first token's; the same text but for an empty first token).
absl::StatusOr<int> ParseSentencePieceDecoder(const Json& decoder,
                                              bool byte_fallback) {
  if (decoder.is_null()) return Unsupported("SentencePiece-style BPE without a decoder");
  std::vector<Json> steps;
  if (StringField(decoder, "type") == "Sequence") {
    for (const Json& step : decoder.at("decoders")) steps.push_back(step);
  } else {
    steps.push_back(decoder);
  }
  bool spaces = false;
  bool bytes = false;
  bool fused = false;
  int strip = 0;
  for (const Json& step : steps) {
    const std::string type = StringField(step, "type");
    if (type == "Replace" && !spaces &&
        StringPattern(step.at("pattern")) == std::string(kSpaceSymbol) &&
        StringField(step, "content") == " ") {
      spaces = true;
    } else if (type == "ByteFallback" && !bytes && !fused) {
      bytes = true;
    } else if (type == "Fuse") {
      fused = true;
    } else if (type == "Strip" && spaces && fused && strip == 0 &&
               StringField(step, "content") == " " &&
               step.value("stop", 0) == 0 && step.value("start", 0) >= 0 &&
               step.value("start", 0) <= 64) {
      strip = step.value("start", 0);
    } else if (type == "Metaspace" && !spaces) {
      ASSIGN_OR_RETURN(const Bpe::Metaspace::Prepend prepend, MetaspacePrepend(step));
      spaces = true;
      strip = prepend == Bpe::Metaspace::Prepend::kNever ? 0 : 1;
    } else {
      return Unsupported(absl::StrCat("decoder step ", step.dump(),
                                      " of a SentencePiece-style BPE"));
    }
  }
  if (!spaces || bytes != byte_fallback) {
    return Unsupported(absl::StrCat(
        "decoder ", decoder.dump(),
        " (a SentencePiece-style BPE needs \u2581 decoded to spaces, and "
        "ByteFallback exactly when the model has byte_fallback)"));
  }
  return strip;
}

// Byte-level spellings (GPT-2's alphabet) -> raw bytes, in place.
absl::Status ByteLevelToRawBytes(Vocab* vocab, Merges* merges) {
  std::string bytes;
  for (auto& [token, id] : *vocab) {
    if (!ByteLevelToBytes(token, &bytes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "vocabulary token \"", token, "\" (id ", id,
          ") is not spelled in the byte-level alphabet"));
    }
    token = bytes;
  }
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    for (std::string* part : {&(*merges)[rank].first, &(*merges)[rank].second}) {
      if (!ByteLevelToBytes(*part, &bytes)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "merge ", rank, ": \"", *part,
            "\" is not spelled in the byte-level alphabet"));
      }
      *part = bytes;
    }
  }
  return absl::OkStatus();
}

// merges.txt as transformers' Qwen2Tokenizer reads it: lines stripped, an
// optional "#version" first line and empty lines skipped.
absl::Status ParseMergesTxt(std::string_view text, Merges* merges) {
  size_t line_no = 0;
  while (!text.empty()) {
    const size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text = eol == text.npos ? std::string_view() : text.substr(eol + 1);
    ++line_no;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) {
      line.remove_suffix(1);
    }
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) {
      continue;
    }
    const size_t space = line.find(' ');
    if (space == line.npos || line.find(' ', space + 1) != line.npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "merges.txt line ", line_no, " is not two space-separated tokens"));
    }
    merges->emplace_back(std::string(line.substr(0, space)),
                         std::string(line.substr(space + 1)));
  }
  return absl::OkStatus();
}

constexpr std::pair<const char*, const char*> kCleanUps[] = {
    {" .", "."},   {" ?", "?"},     {" !", "!"},     {" ,", ","},
    {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},   {" 's", "'s"},
    {" 've", "'ve"}, {" 're", "'re"},
};

// A mergeable adjacent pair waiting in EncodePiece's heap.
struct BpeCandidate {
  int rank;
  int pos;    // index of the left symbol
  int left;   // ids the pair had when queued; a changed pair is stale
  int right;
  int merged;
};

// Heap order: lowest rank first, then leftmost.
bool LaterCandidate(const BpeCandidate& a, const BpeCandidate& b) {
  return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
}

struct BpeScratch {
  std::vector<int> symbol;
  std::vector<int> next;
  std::vector<int> prev;
  std::vector<BpeCandidate> heap;
};

uint64_t PairKey(int left, int right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
         static_cast<uint32_t>(right);
}

absl::StatusOr<Bpe::AddedToken> ParseAddedToken(const Json& json,
                                                        int id) {
  Bpe::AddedToken token;
  token.id = id;
  token.content = json.at("content").get<std::string>();
  token.special = BoolField(json, "special", false);
  token.lstrip = BoolField(json, "lstrip", false);
  token.rstrip = BoolField(json, "rstrip", false);
  // AddedToken's default in HF tokenizers.
  token.normalized = BoolField(json, "normalized", !token.special);
  if (BoolField(json, "single_word", false)) {
    return Unsupported(
        absl::StrCat("single_word added token ", token.content));
  }
  if (token.content.empty() || id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("added token ", id, " is empty or has a negative id"));
  }
  return token;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Bpe>> Bpe::FromTokenizerJson(
    std::string_view tokenizer_json, std::string_view tokenizer_config_json) {
  ASSIGN_OR_RETURN(Json root, ParseJson(tokenizer_json, "tokenizer.json"));
  ASSIGN_OR_RETURN(Json config, ParseConfig(tokenizer_config_json));
  auto tok = absl::WrapUnique(new Bpe);
  Vocab vocab;
  Merges merges;
  std::vector<AddedToken> added;
  try {
    const Json& model = root.at("model");
    RETURN_IF_ERROR(ParseModel(model, &vocab, &merges));
    tok->ignore_merges_ = BoolField(model, "ignore_merges", false);
    tok->byte_fallback_ = BoolField(model, "byte_fallback", false);
    tok->fuse_unk_ = BoolField(model, "fuse_unk", false);
    tok->unk_token_ = StringField(model, "unk_token");
    RETURN_IF_ERROR(
        ParseNormalizer(root.value("normalizer", Json()), &tok->normalizer_));
    bool byte_level = false;
    const Json pre = root.value("pre_tokenizer", Json());
    if (!pre.is_null()) {
      RETURN_IF_ERROR(ParsePreTokenizer(pre, &tok->regex_,
                                        &tok->add_prefix_space_, &byte_level,
                                        &tok->metaspace_));
    }
    const Json decoder = root.value("decoder", Json());
    if (byte_level) {
      if (decoder.is_null() || StringField(decoder, "type") != "ByteLevel") {
        return Unsupported(absl::StrCat(
            "decoder ", decoder.is_null() ? "null" : decoder.dump(),
            " after a ByteLevel pre-tokenizer"));
      }
      if (tok->byte_fallback_) return Unsupported("byte-level BPE with byte_fallback");
      RETURN_IF_ERROR(ByteLevelToRawBytes(&vocab, &merges));
    } else {
      // Pieces spelled as text with \u2581 for spaces (Llama 2, Mistral,
      // Phi-3), split by nothing or by Metaspace.
      if (tok->regex_ != nullptr) {
        return Unsupported("a Split regex without a ByteLevel pre-tokenizer");
      }
      tok->sentencepiece_style_ = true;
      ASSIGN_OR_RETURN(tok->strip_leading_spaces_,
                       ParseSentencePieceDecoder(decoder, tok->byte_fallback_));
    }
    RETURN_IF_ERROR(ParsePostProcessor(root.value("post_processor", Json()),
                                       &tok->prefix_ids_, &tok->suffix_ids_));
    for (const Json& entry : root.value("added_tokens", Json::array())) {
      ASSIGN_OR_RETURN(AddedToken token,
                       ParseAddedToken(entry, JsonTokenId(entry.at("id"))));
      added.push_back(std::move(token));
    }
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: ", e.what()));
  }
  tok->clean_up_spaces_ =
      BoolField(config, "clean_up_tokenization_spaces", true);
  RETURN_IF_ERROR(tok->Build(vocab, merges, std::move(added)));
  tok->eos_id_ = tok->TokenId(TokenString(config, "eos_token"));
  return tok;
}

absl::StatusOr<std::unique_ptr<Bpe>> Bpe::FromVocabMerges(
    std::string_view vocab_json, std::string_view merges_txt,
    std::string_view tokenizer_config_json) {
  ASSIGN_OR_RETURN(Json vocab_root, ParseJson(vocab_json, "vocab.json"));
  ASSIGN_OR_RETURN(Json config, ParseConfig(tokenizer_config_json));
  auto tok = absl::WrapUnique(new Bpe);
  // What the slow tokenizer classes hard-code (transformers'
  // tokenization_gpt2.py / tokenization_qwen2.py).
  const std::string cls = StringField(config, "tokenizer_class");
  const bool gpt2 =
      cls.empty() || cls == "GPT2Tokenizer" || cls == "GPT2TokenizerFast";
  if (gpt2) {
    tok->regex_ = &PretokenizerRegex::Get(PretokenizerPattern::kGpt2);
  } else if (cls == "Qwen2Tokenizer" || cls == "Qwen2TokenizerFast") {
    tok->regex_ = &PretokenizerRegex::Get(PretokenizerPattern::kQwen2);
    tok->normalizer_.push_back({NormalizerStep::Kind::kNfc, "", ""});
  } else {
    return Unsupported(
        absl::StrCat("tokenizer_class ", cls, " with vocab.json + merges.txt"));
  }
  tok->add_prefix_space_ = BoolField(config, "add_prefix_space", false);
  tok->clean_up_spaces_ =
      BoolField(config, "clean_up_tokenization_spaces", true);

  Vocab vocab;
  Merges merges;
  std::vector<AddedToken> added;
  try {
    for (const auto& [token, id] : vocab_root.items()) {
      vocab.emplace_back(token, JsonTokenId(id));
    }
    auto decoder = config.find("added_tokens_decoder");
    if (decoder != config.end()) {
      for (const auto& [id, entry] : decoder->items()) {
        ASSIGN_OR_RETURN(AddedToken token, ParseAddedToken(entry, std::stoi(id)));
        added.push_back(std::move(token));
      }
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab.json / tokenizer_config.json: ", e.what()));
  }
  RETURN_IF_ERROR(ParseMergesTxt(merges_txt, &merges));
  RETURN_IF_ERROR(ByteLevelToRawBytes(&vocab, &merges));
  // GPT2Tokenizer's default bos/eos/unk token, special even without a config.
  if (gpt2 && std::none_of(added.begin(), added.end(), [](const AddedToken& t) {
        return t.content == "<|endoftext|>";
      })) {
    for (const auto& [token, id] : vocab) {
      if (token != "<|endoftext|>") continue;
      AddedToken eot;
      eot.content = token;
      eot.id = id;
      eot.special = true;
      added.push_back(std::move(eot));
    }
  }
  RETURN_IF_ERROR(tok->Build(vocab, merges, std::move(added)));
  if (BoolField(config, "add_bos_token", false)) {
    RETURN_IF_ERROR(tok->SetBos(TokenString(config, "bos_token")));
  }
  std::string eos = TokenString(config, "eos_token");
  tok->eos_id_ = tok->TokenId(eos.empty() && gpt2 ? "<|endoftext|>" : eos);
  return tok;
}

absl::Status Bpe::SetBos(const std::string& bos_token) {
  const int bos_id = TokenId(bos_token);
  if (bos_id < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer_config.json: add_bos_token but bos_token \"", bos_token,
        "\" is not a token"));
  }
  prefix_ids_ = {bos_id};
  return absl::OkStatus();
}

bool Bpe::IsTiktoken(std::string_view tokenizer_model) {
  const std::string_view line =
      tokenizer_model.substr(0, tokenizer_model.find('\n'));
  const size_t space = line.find(' ');
  if (space == 0 || space == line.npos || space + 1 == line.size()) return false;
  auto all_of = [](std::string_view s, auto pred) {
    return std::all_of(s.begin(), s.end(),
                       [&](char c) { return pred(static_cast<unsigned char>(c)); });
  };
  return all_of(line.substr(0, space),
                [](unsigned char c) {
                  return std::isalnum(c) || c == '+' || c == '/' || c == '=';
                }) &&
         all_of(line.substr(space + 1), [](unsigned char c) { return std::isdigit(c); });
}

absl::StatusOr<std::unique_ptr<Bpe>> Bpe::FromTiktoken(
    std::string_view tokenizer_model, std::string_view tokenizer_config_json) {
  if (tokenizer_config_json.empty()) {
    return absl::InvalidArgumentError(
        "a tiktoken tokenizer.model needs tokenizer_config.json (its special "
        "tokens are there)");
  }
  ASSIGN_OR_RETURN(Json config, ParseConfig(tokenizer_config_json));
  Vocab vocab;
  size_t line_no = 0;
  while (!tokenizer_model.empty()) {
    const size_t eol = tokenizer_model.find('\n');
    const std::string_view line = tokenizer_model.substr(0, eol);
    tokenizer_model = eol == tokenizer_model.npos ? std::string_view()
                                                  : tokenizer_model.substr(eol + 1);
    ++line_no;
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    std::string bytes;
    int rank = -1;
    if (space != line.npos &&
        absl::Base64Unescape(absl::string_view(line.data(), space), &bytes) &&
        !bytes.empty() &&
        absl::SimpleAtoi(absl::string_view(line.data() + space + 1,
                                           line.size() - space - 1),
                         &rank)) {
      vocab.emplace_back(std::move(bytes), rank);
      continue;
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "tiktoken tokenizer.model line ", line_no,
        " is not \"base64(token) rank\""));
  }
  std::vector<AddedToken> added;
  try {
    auto decoder = config.find("added_tokens_decoder");
    if (decoder == config.end() || !decoder->is_object() || decoder->empty()) {
      return absl::InvalidArgumentError(
          "tokenizer_config.json lacks the added_tokens_decoder that a "
          "tiktoken tokenizer.model needs for its special tokens");
    }
    for (const auto& [id, entry] : decoder->items()) {
      int token_id = -1;
      if (!absl::SimpleAtoi(id, &token_id)) {
        return absl::InvalidArgumentError(
            absl::StrCat("added_tokens_decoder key \"", id, "\" is not an id"));
      }
      ASSIGN_OR_RETURN(AddedToken token, ParseAddedToken(entry, token_id));
      added.push_back(std::move(token));
    }
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer_config.json: ", e.what()));
  }
  auto tok = absl::WrapUnique(new Bpe);
  // What Meta's llama/tokenizer.py does with the file.
  tok->regex_ = &PretokenizerRegex::Get(PretokenizerPattern::kLlama3);
  tok->ignore_merges_ = true;
  tok->clean_up_spaces_ = BoolField(config, "clean_up_tokenization_spaces", true);
  RETURN_IF_ERROR(tok->Build(vocab, /*merges=*/{}, std::move(added)));
  tok->DeriveMergesFromRanks();
  if (BoolField(config, "add_bos_token", true)) {
    RETURN_IF_ERROR(tok->SetBos(TokenString(config, "bos_token")));
  }
  tok->eos_id_ = tok->TokenId(TokenString(config, "eos_token"));
  return tok;
}

void Bpe::DeriveMergesFromRanks() {
  for (const auto& [bytes, id] : bpe_ids_) {
    for (size_t split = 1; split < bytes.size(); ++split) {
      auto left = bpe_ids_.find(absl::string_view(bytes.data(), split));
      if (left == bpe_ids_.end()) continue;
      auto right = bpe_ids_.find(
          absl::string_view(bytes.data() + split, bytes.size() - split));
      if (right == bpe_ids_.end()) continue;
      merges_[PairKey(left->second, right->second)] = {id, id};
    }
  }
}

absl::StatusOr<std::unique_ptr<Bpe>> Bpe::Load(
    const RootedPath& dir) {
  std::string config;
  auto config_or = ReadFile(dir.Child("tokenizer_config.json"));
  if (config_or.ok()) {
    config = *std::move(config_or);
  } else if (!absl::IsNotFound(config_or.status())) {
    return config_or.status();
  }
  auto json = ReadFile(dir.Child("tokenizer.json"));
  if (json.ok()) return FromTokenizerJson(*json, config);
  if (!absl::IsNotFound(json.status())) return json.status();
  auto vocab = ReadFile(dir.Child("vocab.json"));
  auto merges = ReadFile(dir.Child("merges.txt"));
  if (!absl::IsNotFound(vocab.status()) && !absl::IsNotFound(merges.status())) {
    RETURN_IF_ERROR(vocab.status());
    RETURN_IF_ERROR(merges.status());
    return FromVocabMerges(*vocab, *merges, config);
  }
  auto model = ReadFile(dir.Child("tokenizer.model"));
  if (model.ok() && IsTiktoken(*model)) return FromTiktoken(*model, config);
  if (!model.ok() && !absl::IsNotFound(model.status())) return model.status();
  return absl::NotFoundError(absl::StrCat(
      dir.path,
      ": no tokenizer.json, vocab.json with merges.txt, or tiktoken "
      "tokenizer.model"));
}

absl::Status Bpe::Build(const Vocab& vocab, const Merges& merges,
                        std::vector<AddedToken> added) {
  for (const NormalizerStep& step : normalizer_) {
    if (step.kind == NormalizerStep::Kind::kNfc && NfcInstance() == nullptr) {
      return absl::InternalError("ICU has no NFC normalizer data");
    }
  }
  int size = 0;
  for (const auto& [token, id] : vocab) {
    if (id < 0 || id > kMaxTokenId) {
      return absl::InvalidArgumentError(absl::StrCat(
          "vocabulary token ", token, " has id ", id, "; ids must be in [0, ", kMaxTokenId, "]"));
    }
    size = std::max(size, id + 1);
  }
  for (const AddedToken& t : added) {
    if (t.id < 0 || t.id > kMaxTokenId) {
      return absl::InvalidArgumentError(absl::StrCat(
          "added token ", t.content, " has id ", t.id, "; ids must be in [0, ", kMaxTokenId, "]"));
    }
    size = std::max(size, t.id + 1);
  }
  token_bytes_.assign(size, "");
  pieces_.assign(size, "");
  special_.assign(size, false);
  byte_token_.assign(size, false);

  bpe_ids_.reserve(vocab.size());
  for (const auto& [token, id] : vocab) {
    pieces_[id] = token;
    bpe_ids_[token] = id;
    byte_token_[id] = !sentencepiece_style_;
    // The decoder's Replace of \u2581 by a space (required at load).
    token_bytes_[id] = sentencepiece_style_
                           ? absl::StrReplaceAll(token, {{kSpaceSymbol, " "}})
                           : token;
  }
  for (int b = 0; b < 256; ++b) {
    // HF's byte-fallback spelling, format!("<{:#04X}>", b).
    const std::string piece =
        sentencepiece_style_ ? absl::StrFormat("<0x%02X>", b)
                             : std::string(1, static_cast<char>(b));
    auto it = bpe_ids_.find(piece);
    byte_ids_[b] = it == bpe_ids_.end() ? -1 : it->second;
    if (sentencepiece_style_ && !byte_fallback_) continue;
    if (byte_ids_[b] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "vocabulary lacks the token of byte ", b, " (", piece, ")"));
    }
    if (sentencepiece_style_) {
      token_bytes_[byte_ids_[b]] = std::string(1, static_cast<char>(b));
      byte_token_[byte_ids_[b]] = true;
    }
  }
  if (!unk_token_.empty()) {
    auto unk = bpe_ids_.find(unk_token_);
    if (unk == bpe_ids_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unk_token ", unk_token_, " is not in the vocabulary"));
    }
    unk_id_ = unk->second;
  }

  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    auto l = bpe_ids_.find(left);
    auto r = bpe_ids_.find(right);
    auto m = bpe_ids_.find(left + right);
    if (l == bpe_ids_.end() || r == bpe_ids_.end() || m == bpe_ids_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "merge ", rank, " \"", left, " ", right,
          "\": a part or the result is not in the vocabulary"));
    }
    // A repeated merge takes its last rank, as HF's merge map does.
    merges_[PairKey(l->second, r->second)] = {static_cast<int>(rank),
                                              m->second};
  }

  for (const AddedToken& t : added) {
    const bool rewrites = std::any_of(
        normalizer_.begin(), normalizer_.end(), [](const NormalizerStep& step) {
          return step.kind != NormalizerStep::Kind::kNfc;
        });
    // HF would match it in the Prepend/Replace-rewritten text.
    if (t.normalized && rewrites) {
      return Unsupported(absl::StrCat("added token ", t.content,
                                      " with normalized: true and a Prepend "
                                      "or Replace normalizer"));
    }
  }
  added_ = std::move(added);
  for (size_t i = 0; i < added_.size(); ++i) {
    const AddedToken& t = added_[i];
    token_bytes_[t.id] = t.content;
    pieces_[t.id] = t.content;
    special_[t.id] = t.special;
    byte_token_[t.id] = false;
    added_by_first_byte_[static_cast<unsigned char>(t.content[0])].push_back(
        static_cast<int>(i));
  }
  for (auto& bucket : added_by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [this](int a, int b) {
      return added_[a].content.size() > added_[b].content.size();
    });
  }
  for (const std::vector<int>* template_ids : {&prefix_ids_, &suffix_ids_}) {
    for (int id : *template_ids) {
      if (id < 0 || id >= size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "post-processor token id ", id, " is not in the vocabulary"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int>> Bpe::Encode(
    std::string_view text, bool add_special_tokens) const {
  if (!IsValidUtf8(text)) {
    return absl::InvalidArgumentError("text to encode is not valid UTF-8");
  }
  std::vector<int> ids;
  if (add_special_tokens) ids = prefix_ids_;
  size_t segment_start = 0;
  size_t i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (int k : added_by_first_byte_[static_cast<unsigned char>(text[i])]) {
      if (text.compare(i, added_[k].content.size(), added_[k].content) == 0) {
        hit = &added_[k];
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    std::string_view segment = text.substr(segment_start, i - segment_start);
    if (hit->lstrip) segment.remove_suffix(TrailingWhitespace(segment));
    RETURN_IF_ERROR(EncodeSegment(segment, segment_start == 0, &ids));
    ids.push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip) i += LeadingWhitespace(text.substr(i));
    segment_start = i;
  }
  RETURN_IF_ERROR(
      EncodeSegment(text.substr(segment_start), segment_start == 0, &ids));
  if (add_special_tokens) {
    ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  }
  return ids;
}

absl::Status Bpe::EncodeSegment(std::string_view segment, bool at_text_start,
                                std::vector<int>* ids) const {
  if (segment.empty()) return absl::OkStatus();
  std::string normalized;
  for (const NormalizerStep& step : normalizer_) {
    switch (step.kind) {
      case NormalizerStep::Kind::kNfc: {
        const icu::Normalizer2* nfc = NfcInstance();
        UErrorCode error = U_ZERO_ERROR;
        const icu::StringPiece piece(segment.data(),
                                     static_cast<int32_t>(segment.size()));
        if (nfc->isNormalizedUTF8(piece, error) || U_FAILURE(error)) break;
        std::string out;
        icu::StringByteSink<std::string> sink(&out);
        nfc->normalizeUTF8(0, piece, sink, nullptr, error);
        normalized = std::move(out);
        segment = normalized;
        if (U_FAILURE(error)) {
          return absl::InternalError(
              absl::StrCat("NFC normalization: ", u_errorName(error)));
        }
        break;
      }
      case NormalizerStep::Kind::kPrepend:
        normalized = absl::StrCat(step.text, ToAbsl(segment));
        segment = normalized;
        break;
      case NormalizerStep::Kind::kReplace:
        normalized = absl::StrReplaceAll(ToAbsl(segment),
                                         {{step.text, step.replacement}});
        segment = normalized;
        break;
    }
  }
  if (add_prefix_space_ && segment[0] != ' ') {
    normalized = absl::StrCat(" ", ToAbsl(segment));
    segment = normalized;
  }
  if (metaspace_.has_value()) return EncodeMetaspace(segment, at_text_start, ids);
  if (regex_ == nullptr) {
    EncodePiece(segment, ids);
    return absl::OkStatus();
  }
  std::vector<std::string_view> pieces;
  RETURN_IF_ERROR(regex_->Split(segment, &pieces));
  for (std::string_view piece : pieces) EncodePiece(piece, ids);
  return absl::OkStatus();
}

absl::Status Bpe::EncodeMetaspace(std::string_view segment, bool at_text_start,
                                  std::vector<int>* ids) const {
  std::string text = absl::StrReplaceAll(ToAbsl(segment), {{" ", kSpaceSymbol}});
  const bool starts_with_space = absl::StartsWith(text, kSpaceSymbol);
  if (!starts_with_space &&
      (metaspace_->prepend == Metaspace::Prepend::kAlways ||
       (metaspace_->prepend == Metaspace::Prepend::kFirst && at_text_start))) {
    text.insert(0, kSpaceSymbol);
  }
  if (!metaspace_->split) {
    EncodePiece(text, ids);
    return absl::OkStatus();
  }
  // Split before every \u2581 (HF's MergedWithNext).
  size_t start = 0;
  while (start < text.size()) {
    size_t next = text.find(kSpaceSymbol, start + 1);
    if (next == std::string::npos) next = text.size();
    EncodePiece(std::string_view(text).substr(start, next - start), ids);
    start = next;
  }
  return absl::OkStatus();
}

void Bpe::InitialSymbols(std::string_view piece,
                         std::vector<int>* symbols) const {
  symbols->clear();
  if (!sentencepiece_style_) {
    for (char c : piece) symbols->push_back(byte_ids_[static_cast<unsigned char>(c)]);
    return;
  }
  // One symbol per character: its piece, else its bytes' <0xXX> pieces, else
  // the unknown piece (a run of unknown characters is one with fuse_unk),
  // else nothing, as HF's BPE::merge_word.
  const auto* p = reinterpret_cast<const uint8_t*>(piece.data());
  const int64_t n = static_cast<int64_t>(piece.size());
  bool after_unknown = false;
  for (int64_t i = 0; i < n;) {
    const int64_t start = i;
    UChar32 c;
    U8_NEXT(p, i, n, c);
    auto it = bpe_ids_.find(absl::string_view(piece.data() + start, i - start));
    if (it != bpe_ids_.end()) {
      symbols->push_back(it->second);
      after_unknown = false;
    } else if (byte_fallback_) {
      for (int64_t k = start; k < i; ++k) symbols->push_back(byte_ids_[p[k]]);
      after_unknown = false;
    } else if (unk_id_ >= 0 && !(fuse_unk_ && after_unknown)) {
      symbols->push_back(unk_id_);
      after_unknown = true;
    }
  }
}

void Bpe::EncodePiece(std::string_view piece, std::vector<int>* ids) const {
  if (ignore_merges_) {
    auto it = bpe_ids_.find(absl::string_view(piece.data(), piece.size()));
    if (it != bpe_ids_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  // Reused per thread: most pieces are a few bytes and allocating would
  // dominate.
  thread_local BpeScratch scratch;
  std::vector<int>& symbol = scratch.symbol;  // token id; -1 once merged left
  InitialSymbols(piece, &symbol);
  const int n = static_cast<int>(symbol.size());
  if (n <= 1) {
    ids->insert(ids->end(), symbol.begin(), symbol.end());
    return;
  }
  // Lowest-rank adjacent pair first, leftmost on ties (HF's and tiktoken's
  // order), with a heap over a linked list of symbols so that a long piece
  // (a prompt of one repeated character) costs O(n log n), not O(n^2).
  std::vector<int>& next = scratch.next;  // next live symbol, -1 at the end
  std::vector<int>& prev = scratch.prev;  // previous live symbol, -1 first
  std::vector<BpeCandidate>& heap = scratch.heap;
  next.resize(n);
  prev.resize(n);
  heap.clear();
  for (int k = 0; k < n; ++k) {
    prev[k] = k - 1;
    next[k] = k + 1 < n ? k + 1 : -1;
  }
  auto consider = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    auto it = merges_.find(PairKey(symbol[pos], symbol[next[pos]]));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, pos, symbol[pos], symbol[next[pos]],
                    it->second.id});
    std::push_heap(heap.begin(), heap.end(), LaterCandidate);
  };
  for (int k = 0; k + 1 < n; ++k) consider(k);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), LaterCandidate);
    const BpeCandidate c = heap.back();
    heap.pop_back();
    const int right = next[c.pos];
    if (symbol[c.pos] != c.left || right < 0 || symbol[right] != c.right) {
      continue;
    }
    symbol[c.pos] = c.merged;
    symbol[right] = -1;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    consider(prev[c.pos]);
    consider(c.pos);
  }
  for (int k = 0; k >= 0; k = next[k]) ids->push_back(symbol[k]);
}

std::string Bpe::Decode(absl::Span<const int> ids) const {
  std::string text;
  if (sentencepiece_style_) {
    // HF's ByteFallback decoder: a run of byte pieces that is not valid
    // UTF-8 becomes one U+FFFD per piece.
    std::string run;
    auto end_run = [&] {
      if (IsValidUtf8(run)) {
        text += run;
      } else {
        for (size_t k = 0; k < run.size(); ++k) text += kReplacementChar;
      }
      run.clear();
    };
    for (int id : ids) {
      if (id < 0 || id >= vocab_size()) continue;
      if (byte_token_[id]) {
        run += token_bytes_[id];
      } else {
        end_run();
        text += token_bytes_[id];
      }
    }
    end_run();
    size_t strip = 0;
    while (strip < static_cast<size_t>(strip_leading_spaces_) &&
           strip < text.size() && text[strip] == ' ') {
      ++strip;
    }
    text.erase(0, strip);
  } else {
    for (int id : ids) {
      if (id >= 0 && id < vocab_size()) text += token_bytes_[id];
    }
  }
  if (!IsValidUtf8(text)) {
    // ICU replaces each maximal ill-formed subsequence by one U+FFFD, like
    // Rust's from_utf8_lossy in HF's ByteLevel decoder.
    const icu::UnicodeString lossy = icu::UnicodeString::fromUTF8(
        icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
    text.clear();
    lossy.toUTF8String(text);
  }
  if (clean_up_spaces_) {
    for (const auto& [from, to] : kCleanUps) {
      text = absl::StrReplaceAll(text, {{from, to}});
    }
  }
  return text;
}

int Bpe::TokenId(const std::string& content) const {
  if (content.empty()) return -1;
  for (const AddedToken& t : added_) {
    if (t.content == content) return t.id;
  }
  auto it = bpe_ids_.find(content);
  return it == bpe_ids_.end() ? -1 : it->second;
}

std::string_view Bpe::Piece(int id) const {
  return id >= 0 && id < vocab_size() ? std::string_view(pieces_[id])
                                      : std::string_view();
}

bool Bpe::IsByteToken(int id) const {
  return id >= 0 && id < vocab_size() && byte_token_[id];
}

std::string_view Bpe::TokenBytes(int id) const {
  return id >= 0 && id < vocab_size() ? std::string_view(token_bytes_[id])
                                      : std::string_view();
}

bool Bpe::IsSpecial(int id) const {
  return id >= 0 && id < vocab_size() && special_[id];
}

}  // namespace wq

#include "common/byte_level_bpe.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/file_util.h"
#include "common/status_macros.h"
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
      " is not supported (wq reads byte-level BPE tokenizers and "
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

absl::Status ParseNormalizer(const Json& normalizer, bool* nfc) {
  if (normalizer.is_null()) return absl::OkStatus();
  const std::string type = StringField(normalizer, "type");
  if (type == "NFC") {
    *nfc = true;
    return absl::OkStatus();
  }
  if (type == "Sequence") {
    for (const Json& n : normalizer.at("normalizers")) {
      RETURN_IF_ERROR(ParseNormalizer(n, nfc));
    }
    return absl::OkStatus();
  }
  return Unsupported(absl::StrCat("normalizer ", type));
}

absl::Status ParsePreTokenizer(const Json& pre, const PretokenizerRegex** regex,
                               bool* add_prefix_space, bool* byte_level) {
  const std::string type = StringField(pre, "type");
  if (type == "Sequence") {
    for (const Json& p : pre.at("pretokenizers")) {
      RETURN_IF_ERROR(ParsePreTokenizer(p, regex, add_prefix_space, byte_level));
    }
    return absl::OkStatus();
  }
  if (*byte_level) {
    return Unsupported(absl::StrCat("pre-tokenizer ", type, " after ByteLevel"));
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

absl::Status ParseModel(const Json& model, Vocab* vocab, Merges* merges,
                        bool* ignore_merges) {
  const std::string type = StringField(model, "type");
  if (type != "BPE") return Unsupported(absl::StrCat("model type ", type));
  if (BoolField(model, "byte_fallback", false)) {
    return Unsupported(
        "BPE with byte_fallback (a SentencePiece-style tokenizer.json, e.g. "
        "Llama 2, Mistral, Phi-3)");
  }
  if (!StringField(model, "continuing_subword_prefix").empty() ||
      !StringField(model, "end_of_word_suffix").empty()) {
    return Unsupported("BPE continuing_subword_prefix / end_of_word_suffix");
  }
  auto dropout = model.find("dropout");
  if (dropout != model.end() && !dropout->is_null() &&
      dropout->get<double>() != 0) {
    return Unsupported("BPE dropout");
  }
  *ignore_merges = BoolField(model, "ignore_merges", false);
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

absl::StatusOr<ByteLevelBpe::AddedToken> ParseAddedToken(const Json& json,
                                                        int id) {
  ByteLevelBpe::AddedToken token;
  token.id = id;
  token.content = json.at("content").get<std::string>();
  token.special = BoolField(json, "special", false);
  token.lstrip = BoolField(json, "lstrip", false);
  token.rstrip = BoolField(json, "rstrip", false);
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

absl::StatusOr<std::unique_ptr<ByteLevelBpe>> ByteLevelBpe::FromTokenizerJson(
    std::string_view tokenizer_json, std::string_view tokenizer_config_json) {
  ASSIGN_OR_RETURN(Json root, ParseJson(tokenizer_json, "tokenizer.json"));
  Json config = Json::object();
  if (!tokenizer_config_json.empty()) {
    ASSIGN_OR_RETURN(config, ParseJson(tokenizer_config_json,
                                       "tokenizer_config.json"));
  }
  auto tok = absl::WrapUnique(new ByteLevelBpe);
  Vocab vocab;
  Merges merges;
  std::vector<AddedToken> added;
  try {
    RETURN_IF_ERROR(
        ParseModel(root.at("model"), &vocab, &merges, &tok->ignore_merges_));
    RETURN_IF_ERROR(ParseNormalizer(root.value("normalizer", Json()), &tok->nfc_));
    bool byte_level = false;
    const Json pre = root.value("pre_tokenizer", Json());
    if (!pre.is_null()) {
      RETURN_IF_ERROR(ParsePreTokenizer(pre, &tok->regex_,
                                        &tok->add_prefix_space_, &byte_level));
    }
    if (!byte_level) {
      return Unsupported(absl::StrCat("BPE without a ByteLevel pre-tokenizer (",
                                      pre.is_null() ? "none" : pre.dump(), ")"));
    }
    const Json decoder = root.value("decoder", Json());
    if (decoder.is_null() || StringField(decoder, "type") != "ByteLevel") {
      return Unsupported(absl::StrCat(
          "decoder ", decoder.is_null() ? "null" : decoder.dump()));
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

absl::StatusOr<std::unique_ptr<ByteLevelBpe>> ByteLevelBpe::FromVocabMerges(
    std::string_view vocab_json, std::string_view merges_txt,
    std::string_view tokenizer_config_json) {
  ASSIGN_OR_RETURN(Json vocab_root, ParseJson(vocab_json, "vocab.json"));
  Json config = Json::object();
  if (!tokenizer_config_json.empty()) {
    ASSIGN_OR_RETURN(config, ParseJson(tokenizer_config_json,
                                       "tokenizer_config.json"));
  }
  auto tok = absl::WrapUnique(new ByteLevelBpe);
  // What the slow tokenizer classes hard-code (transformers'
  // tokenization_gpt2.py / tokenization_qwen2.py).
  const std::string cls = StringField(config, "tokenizer_class");
  const bool gpt2 =
      cls.empty() || cls == "GPT2Tokenizer" || cls == "GPT2TokenizerFast";
  if (gpt2) {
    tok->regex_ = &PretokenizerRegex::Get(PretokenizerPattern::kGpt2);
  } else if (cls == "Qwen2Tokenizer" || cls == "Qwen2TokenizerFast") {
    tok->regex_ = &PretokenizerRegex::Get(PretokenizerPattern::kQwen2);
    tok->nfc_ = true;
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
    const std::string bos = TokenString(config, "bos_token");
    const int bos_id = tok->TokenId(bos);
    if (bos_id < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer_config.json: add_bos_token but bos_token \"", bos,
          "\" is not a token"));
    }
    tok->prefix_ids_ = {bos_id};
  }
  std::string eos = TokenString(config, "eos_token");
  tok->eos_id_ = tok->TokenId(eos.empty() && gpt2 ? "<|endoftext|>" : eos);
  return tok;
}

absl::StatusOr<std::unique_ptr<ByteLevelBpe>> ByteLevelBpe::Load(
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
  if (absl::IsNotFound(vocab.status()) || absl::IsNotFound(merges.status())) {
    return absl::NotFoundError(absl::StrCat(
        dir.path, ": no tokenizer.json, nor vocab.json with merges.txt"));
  }
  RETURN_IF_ERROR(vocab.status());
  RETURN_IF_ERROR(merges.status());
  return FromVocabMerges(*vocab, *merges, config);
}

absl::Status ByteLevelBpe::Build(const Vocab& vocab, const Merges& merges,
                                 std::vector<AddedToken> added) {
  if (nfc_ && NfcInstance() == nullptr) {
    return absl::InternalError("ICU has no NFC normalizer data");
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
  special_.assign(size, false);

  std::string bytes;
  bpe_ids_.reserve(vocab.size());
  for (const auto& [token, id] : vocab) {
    if (!ByteLevelToBytes(token, &bytes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "vocabulary token \"", token, "\" (id ", id,
          ") is not spelled in the byte-level alphabet"));
    }
    token_bytes_[id] = bytes;
    bpe_ids_[bytes] = id;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = bpe_ids_.find(std::string(1, static_cast<char>(b)));
    if (it == bpe_ids_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocabulary lacks the token of byte ", b));
    }
    byte_ids_[b] = it->second;
  }

  merges_.reserve(merges.size());
  std::string left;
  std::string right;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const bool spelled = ByteLevelToBytes(a, &left) && ByteLevelToBytes(b, &right);
    auto l = bpe_ids_.find(left);
    auto r = bpe_ids_.find(right);
    auto m = bpe_ids_.find(left + right);
    if (!spelled || l == bpe_ids_.end() || r == bpe_ids_.end() ||
        m == bpe_ids_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "merge ", rank, " \"", a, " ", b,
          "\": a part or the result is not in the vocabulary"));
    }
    // A repeated merge takes its last rank, as HF's merge map does.
    merges_[PairKey(l->second, r->second)] = {static_cast<int>(rank),
                                              m->second};
  }

  added_ = std::move(added);
  for (size_t i = 0; i < added_.size(); ++i) {
    const AddedToken& t = added_[i];
    token_bytes_[t.id] = t.content;
    special_[t.id] = t.special;
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

absl::StatusOr<std::vector<int>> ByteLevelBpe::Encode(
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
    RETURN_IF_ERROR(EncodeSegment(segment, &ids));
    ids.push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip) i += LeadingWhitespace(text.substr(i));
    segment_start = i;
  }
  RETURN_IF_ERROR(EncodeSegment(text.substr(segment_start), &ids));
  if (add_special_tokens) {
    ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  }
  return ids;
}

absl::Status ByteLevelBpe::EncodeSegment(std::string_view segment,
                                         std::vector<int>* ids) const {
  if (segment.empty()) return absl::OkStatus();
  std::string normalized;
  if (nfc_) {
    const icu::Normalizer2* nfc = NfcInstance();
    UErrorCode error = U_ZERO_ERROR;
    const icu::StringPiece piece(segment.data(),
                                 static_cast<int32_t>(segment.size()));
    if (!nfc->isNormalizedUTF8(piece, error)) {
      icu::StringByteSink<std::string> sink(&normalized);
      nfc->normalizeUTF8(0, piece, sink, nullptr, error);
      segment = normalized;
    }
    if (U_FAILURE(error)) {
      return absl::InternalError(
          absl::StrCat("NFC normalization: ", u_errorName(error)));
    }
  }
  if (add_prefix_space_ && segment[0] != ' ') {
    normalized = absl::StrCat(" ", absl::string_view(segment.data(), segment.size()));
    segment = normalized;
  }
  if (regex_ == nullptr) {
    EncodePiece(segment, ids);
    return absl::OkStatus();
  }
  std::vector<std::string_view> pieces;
  RETURN_IF_ERROR(regex_->Split(segment, &pieces));
  for (std::string_view piece : pieces) EncodePiece(piece, ids);
  return absl::OkStatus();
}

void ByteLevelBpe::EncodePiece(std::string_view piece,
                               std::vector<int>* ids) const {
  if (piece.size() == 1) {
    ids->push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (ignore_merges_) {
    auto it = bpe_ids_.find(absl::string_view(piece.data(), piece.size()));
    if (it != bpe_ids_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  // Lowest-rank adjacent pair first, leftmost on ties (HF's and tiktoken's
  // order), with a heap over a linked list of symbols so that a long piece
  // (a prompt of one repeated character) costs O(n log n), not O(n^2).
  const int n = static_cast<int>(piece.size());
  // Reused per thread: most pieces are a few bytes and allocating would
  // dominate.
  thread_local BpeScratch scratch;
  std::vector<int>& symbol = scratch.symbol;  // token id; -1 once merged left
  std::vector<int>& next = scratch.next;  // next live symbol, -1 at the end
  std::vector<int>& prev = scratch.prev;  // previous live symbol, -1 first
  std::vector<BpeCandidate>& heap = scratch.heap;
  symbol.resize(n);
  next.resize(n);
  prev.resize(n);
  heap.clear();
  for (int k = 0; k < n; ++k) {
    symbol[k] = byte_ids_[static_cast<unsigned char>(piece[k])];
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

std::string ByteLevelBpe::Decode(absl::Span<const int> ids) const {
  std::string text;
  for (int id : ids) {
    if (id >= 0 && id < vocab_size()) text += token_bytes_[id];
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

int ByteLevelBpe::TokenId(const std::string& content) const {
  if (content.empty()) return -1;
  for (const AddedToken& t : added_) {
    if (t.content == content) return t.id;
  }
  auto it = bpe_ids_.find(content);
  return it == bpe_ids_.end() ? -1 : it->second;
}

std::string_view ByteLevelBpe::TokenBytes(int id) const {
  return id >= 0 && id < vocab_size() ? std::string_view(token_bytes_[id])
                                      : std::string_view();
}

bool ByteLevelBpe::IsSpecial(int id) const {
  return id >= 0 && id < vocab_size() && special_[id];
}

}  // namespace wq

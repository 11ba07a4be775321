// Bpe against the team's goldens (../shared/tokenizers/<family>/
// golden.json, ids from transformers.js and cross-checked with tiktoken).
// Families shipped without tokenizer.json get one assembled here the way
// transformers' converters build it, so both loaders are exercised.
#include "common/tokenizer/bpe.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "common/io/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;

const std::string kDir = "../shared/tokenizers/";

std::string Read(const std::string& path) {
  auto text = ReadFile(kDir + path);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

// Spelled as in Meta's llama/tokenizer.py and transformers' Qwen2Converter.
constexpr char kLlama3Regex[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kQwen2Regex[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

Json ByteLevel(bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", use_regex}};
}

Json SplitThenByteLevel(const char* regex) {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"},
             {"pattern", {{"Regex", regex}}},
             {"behavior", "Isolated"},
             {"invert", false}},
            ByteLevel(false)}}};
}

// tokenizer.json's added_tokens from tokenizer_config's added_tokens_decoder.
Json AddedTokens(const Json& config) {
  Json added = Json::array();
  for (const auto& [id, entry] : config.at("added_tokens_decoder").items()) {
    Json token = entry;
    token["id"] = std::stoi(id);
    added.push_back(token);
  }
  return added;
}

// merges.txt lines ("a b"), without the #version header.
std::vector<std::string> MergeLines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.rfind("#version", 0) != 0) lines.push_back(line);
    start = end + 1;
  }
  return lines;
}

Json BpeModel(Json vocab, Json merges, bool ignore_merges) {
  return {{"type", "BPE"},          {"dropout", nullptr},
          {"unk_token", nullptr},   {"continuing_subword_prefix", ""},
          {"end_of_word_suffix", ""}, {"fuse_unk", false},
          {"byte_fallback", false}, {"ignore_merges", ignore_merges},
          {"vocab", std::move(vocab)}, {"merges", std::move(merges)}};
}

// Llama 3 as its genuine tokenizer.json is laid out: merges as pairs,
// ignore_merges, Split + ByteLevel, BOS template.
std::string Llama3TokenizerJson() {
  Json merges = Json::array();
  for (const std::string& line : MergeLines(Read("llama3/vocab.bpe"))) {
    const size_t space = line.find(' ');
    merges.push_back({line.substr(0, space), line.substr(space + 1)});
  }
  const Json config = Json::parse(Read("llama3/tokenizer_config.json"));
  Json root = {
      {"added_tokens", AddedTokens(config)},
      {"normalizer", nullptr},
      {"pre_tokenizer", SplitThenByteLevel(kLlama3Regex)},
      {"post_processor",
       {{"type", "Sequence"},
        {"processors",
         {ByteLevel(false),
          {{"type", "TemplateProcessing"},
           {"single",
            {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
             {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
           {"special_tokens",
            {{"<|begin_of_text|>",
              {{"id", "<|begin_of_text|>"},
               {"ids", {128000}},
               {"tokens", {"<|begin_of_text|>"}}}}}}}}}}},
      {"decoder", ByteLevel(true)},
      {"model", BpeModel(Json::parse(Read("llama3/encoder.json")),
                         std::move(merges), /*ignore_merges=*/true)}};
  return root.dump();
}

// Qwen2 as transformers' Qwen2Converter builds it: NFC, "a b" merges.
std::string Qwen2TokenizerJson() {
  const Json config = Json::parse(Read("qwen2/tokenizer_config.json"));
  Json root = {{"added_tokens", AddedTokens(config)},
               {"normalizer", {{"type", "NFC"}}},
               {"pre_tokenizer", SplitThenByteLevel(kQwen2Regex)},
               {"post_processor", ByteLevel(false)},
               {"decoder", ByteLevel(false)},
               {"model", BpeModel(Json::parse(Read("qwen2/vocab.json")),
                                  MergeLines(Read("qwen2/merges.txt")),
                                  /*ignore_merges=*/false)}};
  return root.dump();
}

// GPT-2 as GPT2Converter builds it: ByteLevel with its built-in regex.
std::string Gpt2TokenizerJson() {
  Json root = {{"added_tokens",
                {{{"id", 50256},
                  {"content", "<|endoftext|>"},
                  {"single_word", false},
                  {"lstrip", false},
                  {"rstrip", false},
                  {"normalized", true},
                  {"special", true}}}},
               {"normalizer", nullptr},
               {"pre_tokenizer", ByteLevel(true)},
               {"post_processor", ByteLevel(true)},
               {"decoder", ByteLevel(true)},
               {"model", BpeModel(Json::parse(Read("gpt2/vocab.json")),
                                  MergeLines(Read("gpt2/merges.txt")),
                                  /*ignore_merges=*/false)}};
  return root.dump();
}

absl::Status LoadStatus(const Json& tokenizer_json) {
  return Bpe::FromTokenizerJson(tokenizer_json.dump(), "").status();
}

std::string Ids(const std::vector<int>& ids) {
  return "[" + absl::StrJoin(ids, ", ") + "]";
}

// Every golden case: ids with and without special tokens and both decoded
// texts. Prints and returns how many cases pass.
int CheckGolden(const Bpe& tok, const std::string& family,
                const std::string& loader) {
  const Json golden = Json::parse(Read(family + "/golden.json"));
  int passed = 0;
  for (const Json& c : golden.at("cases")) {
    const std::string text = c.at("text");
    const auto want_with = c.at("ids_with_special").get<std::vector<int>>();
    const auto want_without =
        c.at("ids_without_special").get<std::vector<int>>();
    auto with = tok.Encode(text, /*add_special_tokens=*/true);
    auto without = tok.Encode(text, /*add_special_tokens=*/false);
    if (!with.ok() || !without.ok()) {
      ADD_FAILURE() << family << ": " << with.status() << without.status();
      continue;
    }
    const std::string decoded = tok.Decode(*without);
    const std::string decoded_with = tok.Decode(*with);
    EXPECT_EQ(Ids(*with), Ids(want_with)) << family << ": " << text;
    EXPECT_EQ(Ids(*without), Ids(want_without)) << family << ": " << text;
    EXPECT_EQ(decoded, c.at("decoded").get<std::string>()) << family;
    EXPECT_EQ(decoded_with, c.at("decoded_with_special").get<std::string>())
        << family;
    passed += *with == want_with && *without == want_without &&
              decoded == c.at("decoded") &&
              decoded_with == c.at("decoded_with_special");
  }
  std::cout << family << " (" << loader << "): " << passed << "/"
            << golden.at("cases").size() << " golden cases pass\n";
  return passed;
}

// chat_golden.json: each rendered chat template, encoded without the
// post-processor (the template writes BOS itself).
int CheckChatGolden(const Bpe& tok, const std::string& family) {
  const Json golden = Json::parse(Read(family + "/chat_golden.json"));
  int passed = 0;
  for (const Json& c : golden.at("conversations")) {
    auto ids = tok.Encode(c.at("rendered").get<std::string>(),
                          /*add_special_tokens=*/false);
    if (!ids.ok()) {
      ADD_FAILURE() << family << ": " << ids.status();
      continue;
    }
    const auto want = c.at("ids").get<std::vector<int>>();
    EXPECT_EQ(Ids(*ids), Ids(want)) << family << ": " << c.at("rendered");
    passed += *ids == want;
  }
  std::cout << family << ": " << passed << "/"
            << golden.at("conversations").size() << " chat goldens pass\n";
  return passed;
}

int NumCases(const std::string& family) {
  return Json::parse(Read(family + "/golden.json")).at("cases").size();
}

TEST(BpeGoldenTest, Gpt2VocabMerges) {
  auto tok = Bpe::Load(kDir + "gpt2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "gpt2", "vocab.json+merges.txt"),
            NumCases("gpt2"));
}

TEST(BpeGoldenTest, Gpt2TokenizerJson) {
  auto tok = Bpe::FromTokenizerJson(Gpt2TokenizerJson(), "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "gpt2", "tokenizer.json"), NumCases("gpt2"));
}

TEST(BpeGoldenTest, Llama3TokenizerJson) {
  auto tok = Bpe::FromTokenizerJson(
      Llama3TokenizerJson(), Read("llama3/tokenizer_config.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "llama3", "tokenizer.json"),
            NumCases("llama3"));
  EXPECT_EQ((*tok)->prefix_ids(), std::vector<int>{128000});
  EXPECT_EQ((*tok)->eos_id(), 128001);  // this config's <|end_of_text|>
  EXPECT_EQ(CheckChatGolden(**tok, "llama3"), 6);
}

TEST(BpeGoldenTest, Qwen2VocabMerges) {
  auto tok = Bpe::Load(kDir + "qwen2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "qwen2", "vocab.json+merges.txt"),
            NumCases("qwen2"));
  EXPECT_EQ((*tok)->eos_id(), 151645);  // <|im_end|>
  EXPECT_EQ(CheckChatGolden(**tok, "qwen2"), 6);
  EXPECT_TRUE((*tok)->prefix_ids().empty());
}

TEST(BpeGoldenTest, Qwen2MergesWithoutVersionHeader) {
  std::string merges = Read("qwen2/merges.txt");
  ASSERT_EQ(merges.rfind("#version: 0.2\n", 0), 0u);
  merges.erase(0, merges.find('\n') + 1);
  auto tok = Bpe::FromVocabMerges(
      Read("qwen2/vocab.json"), merges, Read("qwen2/tokenizer_config.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "qwen2", "merges.txt without #version"),
            NumCases("qwen2"));
}

TEST(BpeGoldenTest, Qwen2TokenizerJson) {
  auto tok = Bpe::FromTokenizerJson(
      Qwen2TokenizerJson(), Read("qwen2/tokenizer_config.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "qwen2", "tokenizer.json"), NumCases("qwen2"));
}

// Phi-3-mini's genuine SentencePiece-style tokenizer.json: Prepend +
// Replace normalizer per segment, byte fallback, rstrip on its tags.
TEST(BpeGoldenTest, Phi3TokenizerJson) {
  auto tok = Bpe::Load(kDir + "phi3-mini");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "phi3-mini", "tokenizer.json"),
            NumCases("phi3-mini"));
  EXPECT_EQ(CheckChatGolden(**tok, "phi3-mini"), 6);
  EXPECT_TRUE((*tok)->prefix_ids().empty());  // add_bos_token false
  EXPECT_EQ((*tok)->eos_id(), 32000);          // <|endoftext|>
  EXPECT_EQ((*tok)->decoder_strips_leading_spaces(), 1);
  EXPECT_EQ((*tok)->Piece(15043), "\u2581Hello");
  EXPECT_EQ((*tok)->TokenBytes(15043), " Hello");
  EXPECT_TRUE((*tok)->IsByteToken(13));  // <0x0A>
  EXPECT_EQ((*tok)->TokenBytes(13), "\n");
  EXPECT_FALSE((*tok)->IsByteToken(15043));
  // A byte-fallback run that is not UTF-8: one U+FFFD per piece, as HF.
  EXPECT_EQ((*tok)->Decode({243, 162, 15043}),
            "\uFFFD\uFFFD Hello");
}

// Llama 3 from Meta's tiktoken tokenizer.model alone (no merges list), in a
// directory holding only it and tokenizer_config.json.
TEST(BpeGoldenTest, Llama3Tiktoken) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = std::string(tmp ? tmp : "/tmp") + "/llama3_tiktoken";
  std::filesystem::create_directories(dir);
  for (const char* name : {"tokenizer.model", "tokenizer_config.json"}) {
    std::ofstream(dir + "/" + name, std::ios::binary) << Read(std::string("llama3/") + name);
  }
  EXPECT_TRUE(Bpe::IsTiktoken(Read("llama3/tokenizer.model")));
  EXPECT_FALSE(Bpe::IsTiktoken(Read("llama2/tokenizer.model")));
  auto tok = Bpe::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "llama3", "tiktoken tokenizer.model"),
            NumCases("llama3"));
  EXPECT_EQ(CheckChatGolden(**tok, "llama3"), 6);
  EXPECT_EQ((*tok)->prefix_ids(), std::vector<int>{128000});
  EXPECT_EQ((*tok)->eos_id(), 128001);
  EXPECT_EQ((*tok)->vocab_size(), 128256);
}

TEST(BpeTest, TiktokenNeedsItsConfigAndWellFormedLines) {
  const std::string config = Read("llama3/tokenizer_config.json");
  auto status = Bpe::FromTiktoken("IQ== 0\n", "").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("tokenizer_config.json"));
  status = Bpe::FromTiktoken("IQ== 0\n", "{}").status();
  EXPECT_THAT(std::string(status.message()), HasSubstr("added_tokens_decoder"));
  status = Bpe::FromTiktoken("IQ== 0\n!!! 1\n", config).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("line 2"));
  // Only one byte's token: the other 255 are missing.
  status = Bpe::FromTiktoken("IQ== 0\n", config).status();
  EXPECT_THAT(std::string(status.message()), HasSubstr("lacks the token of byte"));
}

// SentencePiece-style BPE split by a Metaspace pre-tokenizer and decoded by
// a Metaspace decoder (the other way such files are written), by hand.
Json MetaspaceTokenizerJson(const std::string& prepend_scheme, bool fuse_unk) {
  const Json metaspace = {{"type", "Metaspace"},
                          {"replacement", "\u2581"},
                          {"prepend_scheme", prepend_scheme},
                          {"split", true}};
  return {{"added_tokens",
           {{{"id", 7}, {"content", "<s>"}, {"special", true},
             {"normalized", false}, {"lstrip", false}, {"rstrip", false}}}},
          {"normalizer", nullptr},
          {"pre_tokenizer", metaspace},
          {"decoder", metaspace},
          {"model",
           {{"type", "BPE"},
            {"unk_token", "<unk>"},
            {"fuse_unk", fuse_unk},
            {"byte_fallback", false},
            {"vocab",
             {{"<unk>", 0}, {"\u2581", 1}, {"a", 2}, {"b", 3},
              {"\u2581a", 4}, {"\u2581ab", 5}, {"ab", 6}}},
            {"merges", {"\u2581 a", "a b", "\u2581a b"}}}}};
}

TEST(BpeTest, MetaspacePreTokenizerAndDecoder) {
  auto tok = Bpe::FromTokenizerJson(MetaspaceTokenizerJson("first", true).dump(), "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = [&](const Bpe& bpe, const std::string& text) {
    auto encoded = bpe.Encode(text, false);
    EXPECT_TRUE(encoded.ok()) << encoded.status();
    return encoded.ok() ? *encoded : std::vector<int>();
  };
  // "\u2581ab\u2581ab", one word per \u2581; "\u2581 a" (rank 0) before "a b".
  EXPECT_EQ(ids(**tok, "ab ab"), (std::vector<int>{5, 5}));
  // "first": only the segment that starts the text gets a \u2581.
  EXPECT_EQ(ids(**tok, "<s>ab"), (std::vector<int>{7, 6}));
  // Unknown characters: one <unk> per run with fuse_unk.
  EXPECT_EQ(ids(**tok, "xyz a"), (std::vector<int>{1, 0, 4}));
  EXPECT_EQ((*tok)->Decode({5, 5}), "ab ab");
  EXPECT_EQ((*tok)->decoder_strips_leading_spaces(), 1);

  tok = Bpe::FromTokenizerJson(MetaspaceTokenizerJson("always", false).dump(), "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(ids(**tok, "<s>ab"), (std::vector<int>{7, 5}));
  EXPECT_EQ(ids(**tok, "xyz a"), (std::vector<int>{1, 0, 0, 0, 4}));

  tok = Bpe::FromTokenizerJson(MetaspaceTokenizerJson("never", false).dump(), "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(ids(**tok, "ab ab"), (std::vector<int>{6, 5}));
  EXPECT_EQ((*tok)->Decode({6, 5}), "ab ab");
  EXPECT_EQ((*tok)->decoder_strips_leading_spaces(), 0);
}

TEST(BpeTest, RefusesSentencePieceStyleFeaturesItDoesNotImplement) {
  Json json = MetaspaceTokenizerJson("first", true);
  json["added_tokens"][0]["single_word"] = true;
  EXPECT_THAT(std::string(LoadStatus(json).message()), HasSubstr("single_word"));

  // Matched by HF in the normalized text, which Prepend/Replace rewrite.
  json = MetaspaceTokenizerJson("first", true);
  json["added_tokens"][0]["normalized"] = true;
  json["normalizer"] = {{"type", "Prepend"}, {"prepend", "\u2581"}};
  absl::Status status = LoadStatus(json);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("normalized: true"));

  // byte_fallback without a ByteFallback decoder would print "<0x0A>".
  json = MetaspaceTokenizerJson("first", true);
  json["model"]["byte_fallback"] = true;
  status = LoadStatus(json);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("ByteFallback"));

  json = MetaspaceTokenizerJson("first", true);
  json["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", " "}};
  EXPECT_THAT(std::string(LoadStatus(json).message()), HasSubstr("regex"));

  json = MetaspaceTokenizerJson("first", true);
  json["decoder"] = {{"type", "Sequence"},
                     {"decoders", {{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  EXPECT_THAT(std::string(LoadStatus(json).message()), HasSubstr("decoder step"));
}

TEST(BpeTest, DecodeRepairsSplitCharactersAndFlagsSpecials) {
  auto tok = Bpe::Load(kDir + "gpt2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("日", false);
  ASSERT_TRUE(ids.ok());
  ASSERT_GT(ids->size(), 1u);  // GPT-2 spells 日 in several byte tokens
  EXPECT_EQ((*tok)->Decode({ids->front()}), "\uFFFD");
  EXPECT_TRUE((*tok)->IsSpecial(50256));
  EXPECT_EQ((*tok)->eos_id(), 50256);
  EXPECT_FALSE((*tok)->IsSpecial(15496));
  EXPECT_EQ((*tok)->TokenBytes(15496), "Hello");
  EXPECT_FALSE((*tok)->Encode("\xff", false).ok());
}

// One huge pre-tokenizer piece each: BPE must stay O(n log n) and the
// regexes must not run out of PCRE2 JIT stack.
TEST(BpeTest, LongRepeatsRoundTrip) {
  auto tok = Bpe::Load(kDir + "qwen2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::string cjk;
  for (int i = 0; i < 100000; ++i) cjk += "日";
  for (const std::string& text :
       {std::string(500000, 'a'), std::string(500000, ' '),
        std::string(500000, '\n') + "x", std::string(500000, '7'), cjk}) {
    auto ids = (*tok)->Encode(text, /*add_special_tokens=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_LE(ids->size(), text.size());
    EXPECT_TRUE((*tok)->Decode(*ids) == text) << text.substr(0, 8);
  }
}

// Found by fuzz/tokenizer_json_fuzz: one huge id made tables of that size,
// and a float id (4.2e97) was converted to int with undefined behaviour.
TEST(BpeTest, RefusesIdsPastTheCap) {
  const Json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  absl::Status status;
  for (const Json& id : {Json(40000000), Json(4.2e97), Json(1.5), Json(-3)}) {
    const Json bad_vocab_id = {{"type", "BPE"},
                               {"vocab", {{"a", 0}, {"b", id}}},
                               {"merges", Json::array()}};
    status = LoadStatus(
        {{"model", bad_vocab_id}, {"pre_tokenizer", byte_level}, {"decoder", byte_level}});
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << id;
    EXPECT_THAT(std::string(status.message()), HasSubstr("ids must be in [0, 2097151]")) << id;
  }

  const Json small_bpe = {{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", Json::array()}};
  status = LoadStatus({{"model", small_bpe},
                       {"pre_tokenizer", byte_level},
                       {"decoder", byte_level},
                       {"added_tokens", {{{"id", 2147483647}, {"content", "<x>"}}}}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("added token"));
}

TEST(BpeTest, RefusesWhatItDoesNotImplement) {
  const Json empty_bpe = {{"type", "BPE"},
                          {"vocab", Json::object()},
                          {"merges", Json::array()}};
  for (const char* type : {"WordPiece", "Unigram", "WordLevel"}) {
    absl::Status status = LoadStatus(
        {{"model", {{"type", type}, {"vocab", Json::object()}}}});
    EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
    EXPECT_THAT(std::string(status.message()), HasSubstr(type));
  }
  absl::Status status = LoadStatus(
      {{"model", empty_bpe}, {"normalizer", {{"type", "Lowercase"}}}});
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("Lowercase"));

  Json split = SplitThenByteLevel(R"(\s+)");
  status = LoadStatus({{"model", empty_bpe}, {"pre_tokenizer", split}});
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("Split regex"));

  // A Split regex needs ByteLevel after it.
  status = LoadStatus({{"model", empty_bpe},
                       {"pre_tokenizer", SplitThenByteLevel(kQwen2Regex).at("pretokenizers").at(0)}});
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("Split regex without a ByteLevel"));

  status = Bpe::FromVocabMerges(
               Read("gpt2/vocab.json"), Read("gpt2/merges.txt"),
               R"({"tokenizer_class": "LlamaTokenizer"})")
               .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("LlamaTokenizer"));

  EXPECT_TRUE(absl::IsNotFound(Bpe::Load(kDir + "llama2").status()));
}

}  // namespace
}  // namespace wq

// ByteLevelBpe against the team's goldens (../shared/tokenizers/<family>/
// golden.json, ids from transformers.js and cross-checked with tiktoken).
// Families shipped without tokenizer.json get one assembled here the way
// transformers' converters build it, so both loaders are exercised.
#include "common/byte_level_bpe.h"

#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "common/file_util.h"
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

std::string Ids(const std::vector<int>& ids) {
  return "[" + absl::StrJoin(ids, ", ") + "]";
}

// Every golden case: ids with and without special tokens and both decoded
// texts. Prints and returns how many cases pass.
int CheckGolden(const ByteLevelBpe& tok, const std::string& family,
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
int CheckChatGolden(const ByteLevelBpe& tok, const std::string& family) {
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

TEST(ByteLevelBpeGoldenTest, Gpt2VocabMerges) {
  auto tok = ByteLevelBpe::Load(kDir + "gpt2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "gpt2", "vocab.json+merges.txt"),
            NumCases("gpt2"));
}

TEST(ByteLevelBpeGoldenTest, Gpt2TokenizerJson) {
  auto tok = ByteLevelBpe::FromTokenizerJson(Gpt2TokenizerJson(), "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "gpt2", "tokenizer.json"), NumCases("gpt2"));
}

TEST(ByteLevelBpeGoldenTest, Llama3TokenizerJson) {
  auto tok = ByteLevelBpe::FromTokenizerJson(
      Llama3TokenizerJson(), Read("llama3/tokenizer_config.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "llama3", "tokenizer.json"),
            NumCases("llama3"));
  EXPECT_EQ((*tok)->prefix_ids(), std::vector<int>{128000});
  EXPECT_EQ((*tok)->eos_id(), 128001);  // this config's <|end_of_text|>
  EXPECT_EQ(CheckChatGolden(**tok, "llama3"), 6);
}

TEST(ByteLevelBpeGoldenTest, Qwen2VocabMerges) {
  auto tok = ByteLevelBpe::Load(kDir + "qwen2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "qwen2", "vocab.json+merges.txt"),
            NumCases("qwen2"));
  EXPECT_EQ((*tok)->eos_id(), 151645);  // <|im_end|>
  EXPECT_EQ(CheckChatGolden(**tok, "qwen2"), 6);
  EXPECT_TRUE((*tok)->prefix_ids().empty());
}

TEST(ByteLevelBpeGoldenTest, Qwen2MergesWithoutVersionHeader) {
  std::string merges = Read("qwen2/merges.txt");
  ASSERT_EQ(merges.rfind("#version: 0.2\n", 0), 0u);
  merges.erase(0, merges.find('\n') + 1);
  auto tok = ByteLevelBpe::FromVocabMerges(
      Read("qwen2/vocab.json"), merges, Read("qwen2/tokenizer_config.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "qwen2", "merges.txt without #version"),
            NumCases("qwen2"));
}

TEST(ByteLevelBpeGoldenTest, Qwen2TokenizerJson) {
  auto tok = ByteLevelBpe::FromTokenizerJson(
      Qwen2TokenizerJson(), Read("qwen2/tokenizer_config.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CheckGolden(**tok, "qwen2", "tokenizer.json"), NumCases("qwen2"));
}

TEST(ByteLevelBpeTest, DecodeRepairsSplitCharactersAndFlagsSpecials) {
  auto tok = ByteLevelBpe::Load(kDir + "gpt2");
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
TEST(ByteLevelBpeTest, LongRepeatsRoundTrip) {
  auto tok = ByteLevelBpe::Load(kDir + "qwen2");
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

absl::Status LoadStatus(const Json& tokenizer_json) {
  return ByteLevelBpe::FromTokenizerJson(tokenizer_json.dump(), "").status();
}

// Found by fuzz/tokenizer_json_fuzz: one huge id made tables of that size,
// and a float id (4.2e97) was converted to int with undefined behaviour.
TEST(ByteLevelBpeTest, RefusesIdsPastTheCap) {
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

TEST(ByteLevelBpeTest, RefusesWhatItDoesNotImplement) {
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

  // Phi-3's SentencePiece-style tokenizer.json (byte fallback, ▁ spaces).
  status = ByteLevelBpe::FromTokenizerJson(Read("phi3-mini/tokenizer.json"),
                                           "")
               .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("byte_fallback"));

  status = ByteLevelBpe::FromVocabMerges(
               Read("gpt2/vocab.json"), Read("gpt2/merges.txt"),
               R"({"tokenizer_class": "LlamaTokenizer"})")
               .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("LlamaTokenizer"));

  EXPECT_TRUE(absl::IsNotFound(ByteLevelBpe::Load(kDir + "llama2").status()));
}

}  // namespace
}  // namespace wq

#include "common/tokenizer/pretokenizer_regex.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wq {
namespace {

using ::testing::ElementsAre;

std::vector<std::string> Split(PretokenizerPattern pattern,
                               std::string_view text) {
  std::vector<std::string_view> pieces;
  EXPECT_TRUE(PretokenizerRegex::Get(pattern).Split(text, &pieces).ok());
  return {pieces.begin(), pieces.end()};
}

TEST(PretokenizerRegexTest, Gpt2KeepsDigitRunsAndCaseSensitiveContractions) {
  EXPECT_THAT(Split(PretokenizerPattern::kGpt2, "Hello world 12345 HE'S  x"),
              ElementsAre("Hello", " world", " 12345", " HE", "'", "S", " ",
                          " x"));
}

TEST(PretokenizerRegexTest, Llama3GroupsDigitsByThree) {
  EXPECT_THAT(Split(PretokenizerPattern::kLlama3, "1234567 HE'S\n\nok"),
              ElementsAre("123", "456", "7", " HE", "'S", "\n\n", "ok"));
}

TEST(PretokenizerRegexTest, Qwen2SplitsSingleDigitsAndLetters) {
  EXPECT_THAT(Split(PretokenizerPattern::kQwen2, "ab12 日本語"),
              ElementsAre("ab", "1", "2", " 日本語"));
}

TEST(PretokenizerRegexTest, FindRecognisesTheTablePatternsOnly) {
  const PretokenizerRegex& llama3 =
      PretokenizerRegex::Get(PretokenizerPattern::kLlama3);
  EXPECT_EQ(PretokenizerRegex::Find(llama3.regex()), &llama3);
  EXPECT_EQ(PretokenizerRegex::Find("\\s+"), nullptr);
}

TEST(PretokenizerRegexTest, RejectsInvalidUtf8) {
  std::vector<std::string_view> pieces;
  EXPECT_FALSE(PretokenizerRegex::Get(PretokenizerPattern::kGpt2)
                   .Split("ab\xff", &pieces)
                   .ok());
}

TEST(ByteLevelAlphabetTest, RoundTripsEveryByte) {
  const auto& alphabet = ByteLevelAlphabet();
  EXPECT_EQ(alphabet[' '], "\u0120");   // Ġ
  EXPECT_EQ(alphabet['\n'], "\u010A");  // Ċ
  EXPECT_EQ(alphabet['A'], "A");
  std::string all;
  std::string spelled;
  for (int b = 0; b < 256; ++b) {
    all.push_back(static_cast<char>(b));
    spelled += alphabet[b];
  }
  std::string back;
  ASSERT_TRUE(ByteLevelToBytes(spelled, &back));
  EXPECT_EQ(back, all);
  EXPECT_FALSE(ByteLevelToBytes("\u00AD", &back));  // soft hyphen: not in it
  EXPECT_FALSE(ByteLevelToBytes("日", &back));
}

}  // namespace
}  // namespace wq

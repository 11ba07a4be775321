#include "common/tokenizer/tokenizer.h"

#include <google/protobuf/timestamp.pb.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wq {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kModel[] = "testdata/models/stories260K/tokenizer.model";
constexpr char kReplacement[] = "\xEF\xBF\xBD";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Strict UTF-8 check: no overlongs, surrogates or code points > U+10FFFF.
bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    int len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b < 0x80) {
      len = 1;
    } else if (b >= 0xC2 && b <= 0xDF) {
      len = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      len = 3;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      len = 4;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) return false;
    }
    i += len;
  }
  return true;
}

// Byte piece id of byte b in the stories260K model.
int ByteId(unsigned char b) { return b + 3; }

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tok = Tokenizer::Load(kModel);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    tok_ = nullptr;
  }

  // Streams ids through a detokenizer, checking every chunk is valid UTF-8.
  static std::string Stream(const std::vector<int>& ids, bool at_start) {
    StreamingDetokenizer detok(*tok_, at_start);
    std::string text;
    for (int id : ids) {
      const std::string chunk = detok.Push(id);
      EXPECT_TRUE(IsValidUtf8(chunk)) << "id " << id;
      text += chunk;
    }
    const std::string tail = detok.Flush();
    EXPECT_TRUE(IsValidUtf8(tail));
    return text + tail;
  }

  static Tokenizer* tok_;
};

Tokenizer* TokenizerTest::tok_ = nullptr;

const std::vector<std::string>& RoundTripStrings() {
  static const auto* const strings = new std::vector<std::string>{
      "Once upon a time",
      "Hello, world!\nNew line\ttab",
      "naïve café",
      "世界",
      "🙂",
      "Lily said: \"世界 🙂 naïve\" — ok?\n\nThe end.",
      "x",
  };
  return *strings;
}

TEST_F(TokenizerTest, ModelFacts) {
  EXPECT_EQ(tok_->vocab_size(), 512);
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_EQ(tok_->unk_id(), 0);
  EXPECT_EQ(tok_->Piece(0), "<unk>");
  EXPECT_EQ(tok_->Piece(1), "<s>");
  EXPECT_EQ(tok_->Piece(2), "</s>");
  EXPECT_EQ(tok_->Kind(0), Tokenizer::PieceKind::kUnknown);
  EXPECT_EQ(tok_->Kind(1), Tokenizer::PieceKind::kControl);
  EXPECT_EQ(tok_->Kind(2), Tokenizer::PieceKind::kControl);
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(tok_->Piece(ByteId(b)), absl::StrFormat("<0x%02X>", b));
    EXPECT_EQ(tok_->Kind(ByteId(b)), Tokenizer::PieceKind::kByte);
    EXPECT_EQ(tok_->Surface(ByteId(b)), std::string(1, static_cast<char>(b)));
  }
  EXPECT_EQ(tok_->Piece(13), "<0x0A>");
  for (int id = 259; id < 512; ++id) {
    EXPECT_EQ(tok_->Kind(id), Tokenizer::PieceKind::kNormal) << id;
  }
  EXPECT_EQ(tok_->Piece(403), "\xE2\x96\x81Once");
  EXPECT_EQ(tok_->Surface(403), " Once");
}

TEST_F(TokenizerTest, EncodesPrompt) {
  auto ids = tok_->Encode("Once upon a time", /*add_bos=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(1, 403, 407, 261, 378));
  ids = tok_->Encode("Once upon a time", /*add_bos=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(403, 407, 261, 378));
  ids = tok_->Encode("", /*add_bos=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(1));
}

// Sentencepiece gives no ids for "", which the shim must copy without
// handing memcpy a null pointer (UBSan: -fsanitize=undefined).
TEST_F(TokenizerTest, EncodesEmptyText) {
  auto ids = tok_->Encode("", /*add_bos=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre());
  ids = tok_->Encode(std::string_view(), /*add_bos=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(1));
}

TEST_F(TokenizerTest, EncodesWholeFiles) {
  const std::string valid = ReadFile("testdata/data/tinystories_valid.txt");
  const std::string train =
      ReadFile("testdata/data/tinystories_train_head.txt");
  ASSERT_FALSE(valid.empty());
  ASSERT_FALSE(train.empty());
  auto ids = tok_->Encode(valid, /*add_bos=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->size(), 393012u);
  ids = tok_->Encode(train, /*add_bos=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->size(), 100702u);
}

TEST_F(TokenizerTest, DecodesContinuation) {
  // golden.json's greedy ids after the prompt.
  const std::vector<int> greedy = {
      432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426,
      338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322,
      265, 282, 295, 433, 426, 385, 328, 432, 358, 394};
  const std::vector<int> first14(greedy.begin(), greedy.begin() + 14);
  const std::string expected14 =
      ", there was a little girl named Lily. She loved";
  EXPECT_EQ(tok_->Decode(first14), expected14);
  EXPECT_EQ(Stream(first14, /*at_start=*/false), expected14);

  const std::string golden_text =
      "Once upon a time, there was a little girl named Lily. She loved to "
      "play outside in the park. One day, she saw";
  std::vector<int> all = {1, 403, 407, 261, 378};
  all.insert(all.end(), greedy.begin(), greedy.end());
  EXPECT_EQ(tok_->Decode(all), golden_text);
  all.push_back(tok_->eos_id());
  EXPECT_EQ(Stream(all, /*at_start=*/true), golden_text);
  EXPECT_EQ(tok_->Decode(all), golden_text);
}

TEST_F(TokenizerTest, RoundTrips) {
  for (const std::string& text : RoundTripStrings()) {
    auto ids = tok_->Encode(text, /*add_bos=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(tok_->Decode(*ids), text);
  }
}

TEST_F(TokenizerTest, StreamingMatchesDecode) {
  for (const std::string& text : RoundTripStrings()) {
    auto ids = tok_->Encode(text, /*add_bos=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(Stream(*ids, /*at_start=*/true), tok_->Decode(*ids)) << text;
  }
}

TEST_F(TokenizerTest, StreamingMatchesDecodeOnStories) {
  const std::string valid = ReadFile("testdata/data/tinystories_valid.txt");
  // First 20,000 characters (code points), not bytes.
  size_t end = 0;
  for (int chars = 0; chars < 20000 && end < valid.size(); ++chars) {
    do {
      ++end;
    } while (end < valid.size() &&
             (static_cast<unsigned char>(valid[end]) & 0xC0) == 0x80);
  }
  const std::string text = valid.substr(0, end);
  auto ids = tok_->Encode(text, /*add_bos=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  const std::string decoded = tok_->Decode(*ids);
  EXPECT_EQ(Stream(*ids, /*at_start=*/true), decoded);
  EXPECT_TRUE(IsValidUtf8(decoded));
}

TEST_F(TokenizerTest, ByteFallbackWaitsForCompleteCharacter) {
  // "世" is E4 B8 96, which this tiny vocabulary spells as byte pieces.
  auto ids = tok_->Encode("世", /*add_bos=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, testing::IsSupersetOf(
                        {ByteId(0xE4), ByteId(0xB8), ByteId(0x96)}));

  StreamingDetokenizer detok(*tok_, /*at_sequence_start=*/false);
  EXPECT_EQ(detok.Push(ByteId(0xE4)), "");
  EXPECT_EQ(detok.Push(ByteId(0xB8)), "");
  EXPECT_EQ(detok.Push(ByteId(0x96)), "世");
  EXPECT_EQ(detok.Flush(), "");
  // A 4-byte emoji: F0 9F 99 82.
  EXPECT_EQ(detok.Push(ByteId(0xF0)), "");
  EXPECT_EQ(detok.Push(ByteId(0x9F)), "");
  EXPECT_EQ(detok.Push(ByteId(0x99)), "");
  EXPECT_EQ(detok.Push(ByteId(0x82)), "🙂");
}

TEST_F(TokenizerTest, FlushReplacesDanglingBytes) {
  const std::vector<int> partial = {ByteId(0xE4), ByteId(0xB8)};
  StreamingDetokenizer detok(*tok_, /*at_sequence_start=*/false);
  EXPECT_EQ(detok.Push(partial[0]), "");
  EXPECT_EQ(detok.Push(partial[1]), "");
  const std::string tail = detok.Flush();
  EXPECT_THAT(tail, HasSubstr(kReplacement));
  EXPECT_TRUE(IsValidUtf8(tail));
  // Same rendering as sentencepiece's own Decode.
  EXPECT_EQ(tail, tok_->Decode(partial));
  EXPECT_EQ(detok.Flush(), "");
}

TEST_F(TokenizerTest, InvalidBytesDoNotStall) {
  StreamingDetokenizer detok(*tok_, /*at_sequence_start=*/false);
  // 0xFF can never start a character.
  EXPECT_EQ(detok.Push(ByteId(0xFF)), kReplacement);
  // A lead byte followed by ASCII: the lead is dead, the ASCII comes through.
  EXPECT_EQ(detok.Push(ByteId(0xE4)), "");
  EXPECT_EQ(detok.Push(ByteId('A')), std::string(kReplacement) + "A");
  // A stray continuation byte.
  EXPECT_EQ(detok.Push(ByteId(0x80)), kReplacement);
  // Surrogate prefix ED A0 is invalid at the second byte.
  EXPECT_EQ(detok.Push(ByteId(0xED)), "");
  EXPECT_EQ(detok.Push(ByteId(0xA0)),
            std::string(kReplacement) + kReplacement);

  const std::vector<int> ids = {ByteId(0xFF), ByteId(0xE4), ByteId('A'),
                                ByteId(0x80), 403, ByteId(0xE4), 403};
  EXPECT_EQ(Stream(ids, /*at_start=*/true), tok_->Decode(ids));
}

TEST_F(TokenizerTest, ControlIdsAreSilent) {
  StreamingDetokenizer detok(*tok_, /*at_sequence_start=*/true);
  EXPECT_EQ(detok.Push(tok_->bos_id()), "");
  // The dummy prefix is still stripped after BOS.
  EXPECT_EQ(detok.Push(403), "Once");
  EXPECT_EQ(detok.Push(407), " upon");
  EXPECT_EQ(detok.Push(tok_->eos_id()), "");
}

TEST_F(TokenizerTest, OutOfRangeIdsAreUnknown) {
  EXPECT_EQ(tok_->Piece(-1), "");
  EXPECT_EQ(tok_->Piece(512), "");
  EXPECT_EQ(tok_->Kind(1 << 30), Tokenizer::PieceKind::kUnknown);
  const std::string unk = tok_->Decode({0});
  EXPECT_EQ(unk, " \xE2\x81\x87 ");
  EXPECT_EQ(tok_->Decode({-5, 512, 1 << 30}), unk + unk + unk);
  StreamingDetokenizer detok(*tok_, /*at_sequence_start=*/true);
  EXPECT_EQ(detok.Push(-1), unk);
  EXPECT_EQ(detok.Push(100000), unk);
  EXPECT_EQ(detok.Push(0), unk);
}

TEST(TokenizerLoadTest, MissingFileIsNotFound) {
  auto tok = Tokenizer::Load("testdata/no/such/tokenizer.model");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tok.status().message(), HasSubstr("no/such/tokenizer.model"));
}

TEST(TokenizerLoadTest, GarbageFileIsInvalidArgument) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path =
      std::string(tmp ? tmp : "/tmp") + "/garbage_tokenizer.model";
  {
    std::ofstream out(path, std::ios::binary);
    out << "this is not a protobuf \xFF\xFE\x01\x02 at all";
  }
  auto tok = Tokenizer::Load(path);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tok.status().message(), HasSubstr(path));
}

// This binary links libprotobuf.so.32; linking libsentencepiece directly
// would crash it at start-up. Using both proves the dlopen shim isolates them.
TEST(TokenizerLoadTest, WorksAlongsideProtobuf) {
  google::protobuf::Timestamp ts;
  ts.set_seconds(1700000000);
  ts.set_nanos(5);
  google::protobuf::Timestamp parsed;
  ASSERT_TRUE(parsed.ParseFromString(ts.SerializeAsString()));
  EXPECT_EQ(parsed.seconds(), 1700000000);

  auto tok = Tokenizer::Load(kModel);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("Once upon a time", /*add_bos=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(1, 403, 407, 261, 378));
  EXPECT_EQ((*tok)->Decode(*ids), "Once upon a time");
}

// Hugging Face model directories (the team's tokenizer fixtures), each file
// kind picked by LoadModelDir.
constexpr char kHfDir[] = "../shared/tokenizers/";

TEST(TokenizerModelDirTest, PicksBpeFromVocabAndMerges) {
  auto tok = Tokenizer::LoadModelDir(std::string(kHfDir) + "qwen2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("Hello world", /*add_bos=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(9707, 1879));  // Qwen2 adds no BOS
  EXPECT_EQ((*tok)->bos_id(), -1);
  EXPECT_EQ((*tok)->eos_id(), 151645);  // <|im_end|>
  EXPECT_EQ((*tok)->Kind(151644), Tokenizer::PieceKind::kControl);
  EXPECT_EQ((*tok)->Kind(9707), Tokenizer::PieceKind::kByte);
  // Special tokens are control pieces: no text, as for SentencePiece.
  ids = (*tok)->Encode("<|im_start|>user\nHi<|im_end|>", /*add_bos=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->front(), 151644);
  EXPECT_EQ((*tok)->Decode(*ids), "user\nHi");
}

// Streams `text`'s ids through a StreamingDetokenizer, expecting exactly
// `text` back, never a U+FFFD, and Decode to agree; returns how many tokens
// ended inside a character (and so emitted nothing).
int TokensInsideCharacters(const Tokenizer& tok, const std::string& text) {
  auto ids = tok.Encode(text, /*add_bos=*/false);
  EXPECT_TRUE(ids.ok()) << ids.status();
  if (!ids.ok()) return 0;
  StreamingDetokenizer detok(tok, /*at_sequence_start=*/true);
  std::string streamed;
  int waiting = 0;
  for (int id : *ids) {
    const std::string piece = detok.Push(id);
    waiting += piece.empty();
    EXPECT_EQ(piece.find(kReplacement), std::string::npos) << id;
    streamed += piece;
  }
  streamed += detok.Flush();
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(tok.Decode(*ids), text);
  return waiting;
}

TEST(TokenizerModelDirTest, BpeStreamWaitsForWholeCharacters) {
  auto tok = Tokenizer::LoadModelDir(std::string(kHfDir) + "gpt2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  // GPT-2 spells these characters in byte tokens.
  EXPECT_GT(TokensInsideCharacters(**tok, "日本 emoji 😀🎉 done"), 0);
}

TEST(TokenizerModelDirTest, FallsBackToSentencePiece) {
  // Only a SentencePiece model there.
  auto spm = Tokenizer::LoadModelDir(std::string(kHfDir) + "llama2");
  ASSERT_TRUE(spm.ok()) << spm.status();
  EXPECT_EQ((*spm)->vocab_size(), 32000);
  EXPECT_EQ((*spm)->bos_id(), 1);
}

// A directory under TEST_TMPDIR holding `files` (name -> content).
std::string TempModelDir(const std::string& name,
                         const std::vector<std::pair<std::string, std::string>>& files) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = std::string(tmp ? tmp : "/tmp") + "/" + name;
  std::filesystem::create_directories(dir);
  for (const auto& [file, content] : files) {
    std::ofstream(dir + "/" + file, std::ios::binary) << content;
  }
  return dir;
}

std::string ReadShared(const std::string& path) {
  return ReadFile(std::string(kHfDir) + path);
}

TEST(TokenizerModelDirTest, RefusedTokenizerJsonWithoutModelIsAnError) {
  const std::string dir = TempModelDir(
      "wordpiece", {{"tokenizer.json",
                     R"({"model": {"type": "WordPiece", "vocab": {}}})"}});
  auto tok = Tokenizer::LoadModelDir(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(tok.status().message(), HasSubstr("WordPiece"));

  tok = Tokenizer::LoadModelDir("testdata/no/such/dir");
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
}

// Meta's tiktoken tokenizer.model is told from SentencePiece's by content.
TEST(TokenizerModelDirTest, PicksTiktokenModelByContent) {
  const std::string dir = TempModelDir(
      "llama3_tiktoken",
      {{"tokenizer.model", ReadShared("llama3/tokenizer.model")},
       {"tokenizer_config.json", ReadShared("llama3/tokenizer_config.json")}});
  auto tok = Tokenizer::LoadModelDir(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("Hello world", /*add_bos=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(128000, 9906, 1917));
  EXPECT_EQ((*tok)->bos_id(), 128000);
  EXPECT_EQ((*tok)->Decode(*ids), "Hello world");
}

// Phi-3's SentencePiece-style tokenizer.json: byte-fallback pieces that end
// inside a character emit nothing until it is complete.
TEST(TokenizerModelDirTest, SentencePieceStyleBpeStreamsWholeCharacters) {
  auto tok = Tokenizer::LoadModelDir(std::string(kHfDir) + "phi3-mini");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Kind(13), Tokenizer::PieceKind::kByte);  // <0x0A>
  EXPECT_EQ((*tok)->Kind(15043), Tokenizer::PieceKind::kNormal);
  EXPECT_EQ((*tok)->Kind(32007), Tokenizer::PieceKind::kControl);  // <|end|>
  // 텍, 😀 and 🎉 come as byte pieces.
  EXPECT_GE(TokensInsideCharacters(**tok, "한국어 텍스트 emoji 😀🎉 done"), 5);
  // Control ids give no text; the first piece's space is dropped.
  auto ids = (*tok)->Encode("<|user|>\nHi<|end|>", /*add_bos=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(32010, 6324, 32007));
  EXPECT_EQ((*tok)->Decode(*ids), "Hi");
}

}  // namespace
}  // namespace wq

// Every family in architecture.h against the team's tiny random checkpoints
// (../shared/models/tiny-*): logits from an independent float64
// implementation of Hugging Face's modelling code at all 24 positions of two
// sequences, and 16 greedy tokens. Also: bf16 and f16 weights split over an
// indexed pair of shards load to the same model as their fp32 values in one
// file.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/model/llama.h"
#include "common/formats/safetensors.h"
#include "common/serving/scheduler.h"
#include "common/tokenizer/tokenizer.h"
#include "tests/rounded_checkpoint.h"
#include "gtest/gtest.h"
#include "tests/model_test_util.h"
#include "tests/test_util.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

using test::SharedModelDir;

nlohmann::json Golden(const std::string& name) {
  return test::ReadJson(SharedModelDir(name) + "/golden.json");
}

class ModelFamilyTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto weights = LoadLlamaModelDir(SharedModelDir(GetParam()));
    ASSERT_TRUE(weights.ok()) << weights.status();
    model_ = std::make_unique<LlamaModel>(*weights);
    golden_ = Golden(GetParam());
  }
  std::unique_ptr<LlamaModel> model_;
  nlohmann::json golden_;
};

TEST_P(ModelFamilyTest, ArchitectureIsTheOneTheCheckpointNames) {
  EXPECT_EQ(model_->config().spec().hf_class, golden_["architecture"].get<std::string>());
}

// Both sequences in one batched pass, every position's logits.
TEST_P(ModelFamilyTest, LogitsMatchFloat64ReferenceAtEveryPosition) {
  const auto& sequences = golden_["sequences"];
  ASSERT_EQ(sequences.size(), 2u);
  std::vector<std::vector<int>> ids;
  std::vector<KVCache> caches;
  caches.reserve(sequences.size());
  std::vector<SequenceChunk> chunks;
  for (const auto& s : sequences) ids.push_back(s["ids"].get<std::vector<int>>());
  for (const auto& seq : ids) {
    caches.emplace_back(model_->config(), 64);
    SequenceChunk chunk;
    chunk.cache = &caches.back();
    chunk.tokens = seq;
    chunk.all_logits = true;
    chunks.push_back(chunk);
  }
  std::vector<float> logits;
  ASSERT_TRUE(model_->Forward(chunks, &logits).ok());
  const int vocab = model_->config().vocab_size;
  double worst = 0;
  int64_t row = 0;
  for (size_t s = 0; s < ids.size(); ++s) {
    const auto& expected = sequences[s]["logits"];
    ASSERT_EQ(expected.size(), ids[s].size());
    for (size_t p = 0; p < ids[s].size(); ++p, ++row) {
      ASSERT_EQ(expected[p].size(), static_cast<size_t>(vocab));
      for (int i = 0; i < vocab; ++i) {
        const double diff = std::abs(logits[row * vocab + i] - expected[p][i].get<double>());
        worst = std::max(worst, diff);
        ASSERT_LT(diff, 1e-4) << "sequence " << s << " position " << p << " token " << i;
      }
    }
  }
  std::printf("%s: max |logit - golden| over %lld positions: %.2e\n", GetParam().c_str(),
              static_cast<long long>(row), worst);
}

// Prefill of the prompt, then one token per step through the KV cache.
TEST_P(ModelFamilyTest, GreedyTokensMatchExactly) {
  const std::vector<int> prompt = golden_["greedy_prompt_ids"].get<std::vector<int>>();
  const std::vector<int> expected = golden_["greedy_ids"].get<std::vector<int>>();
  EXPECT_EQ(test::GreedyTokens(*model_, prompt, static_cast<int>(expected.size())), expected);
}

INSTANTIATE_TEST_SUITE_P(TinyCheckpoints, ModelFamilyTest,
                         ::testing::Values("tiny-llama3", "tiny-mistral", "tiny-qwen2",
                                           "tiny-qwen3", "tiny-phi3"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// The RoPE scalings without a golden checkpoint, against transformers'
// formulas (modeling_rope_utils.py) evaluated here in double.
TEST(RopeScaling, LinearAndDynamicFrequencies) {
  LlamaConfig c;
  c.head_dim = 8;
  c.rope_theta = 10000;
  c.max_position_embeddings = 128;
  const std::vector<double> plain = RotaryEmbedding::InverseFrequencies(c, 0);
  c.rope_scaling.type = RopeScaling::Type::kLinear;
  c.rope_scaling.factor = 4;
  const std::vector<double> linear = RotaryEmbedding::InverseFrequencies(c, 0);
  for (int i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(linear[i], plain[i] / 4) << i;

  c.rope_scaling.type = RopeScaling::Type::kDynamic;
  c.rope_scaling.original_max_position_embeddings = 128;
  EXPECT_EQ(RotaryEmbedding::InverseFrequencies(c, 128), plain);
  const std::vector<double> stretched = RotaryEmbedding::InverseFrequencies(c, 256);
  const double base = 10000 * std::pow(4.0 * 256 / 128 - 3, 8.0 / 6);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(stretched[i], std::pow(base, -2.0 * i / 8), 1e-12) << i;
  EXPECT_EQ(ContextLength(c), 512);
}

using test::MaxAbsDifference;
using test::SequenceLogits;

TEST_P(ModelFamilyTest, ShardedHalfLoadsToTheSameModelAsItsFp32Values) {
  const std::vector<int> ids = golden_["sequences"][0]["ids"].get<std::vector<int>>();
  const std::vector<float> exact = SequenceLogits(*model_, ids);
  // How far rounding the weights may move the logits from the fp32
  // checkpoint's (logits reach |10|): bf16 measured 0.12-0.27; f16, with 3
  // more significand bits, 0.013-0.035.
  for (const auto& [half, bound] : {std::pair{DType::kBF16, 0.5}, std::pair{DType::kF16, 0.07}}) {
    const std::string root = absl::StrCat(::testing::TempDir(), "/sharded_",
                                          std::string(DTypeName(half)), "_", GetParam());
    ASSERT_TRUE(
        WriteRoundedCopy(SharedModelDir(GetParam()), root + "/sharded", half, /*sharded=*/true).ok());
    ASSERT_TRUE(
        WriteRoundedCopy(SharedModelDir(GetParam()), root + "/single", half, /*sharded=*/false).ok());
    auto sharded = LoadLlamaModelDir(root + "/sharded");
    ASSERT_TRUE(sharded.ok()) << sharded.status();
    auto single = LoadLlamaModelDir(root + "/single");
    ASSERT_TRUE(single.ok()) << single.status();
    const std::vector<float> from_half = SequenceLogits(LlamaModel(*sharded), ids);
    const std::vector<float> from_fp32 = SequenceLogits(LlamaModel(*single), ids);
    ASSERT_EQ(from_half, from_fp32) << DTypeName(half);
    const double worst = MaxAbsDifference(exact, from_half);
    std::printf("%s: %s weights move logits by at most %.3f\n", GetParam().c_str(),
                std::string(DTypeName(half)).c_str(), worst);
    EXPECT_LT(worst, bound) << DTypeName(half);
    // Served as stored: bf16 computes in bf16 (activations rounded to bf16
    // too); f16 in fp32, the converted model's products in another order.
    auto served = LoadLlamaModelDir(root + "/sharded", FileBacking::kCopied,
                                    HalfWeights::kServeAsStored);
    ASSERT_TRUE(served.ok()) << served.status();
    const double served_worst =
        MaxAbsDifference(from_fp32, SequenceLogits(LlamaModel(*served), ids));
    std::printf("%s: %s served as stored moves them by at most %.6f more\n",
                GetParam().c_str(), std::string(DTypeName(half)).c_str(), served_worst);
    EXPECT_LT(served_worst, half == DType::kBF16 ? 0.5 : 1e-3) << DTypeName(half);
  }
}

TEST(ShardedBf16Checkpoint, IndexNamingAMissingShardIsAnError) {
  const std::string dir = ::testing::TempDir() + "/missing_shard";
  ASSERT_TRUE(
      WriteRoundedCopy(SharedModelDir("tiny-qwen2"), dir, DType::kBF16, /*sharded=*/true).ok());
  std::filesystem::remove(dir + "/model-00002-of-00002.safetensors");
  auto weights = LoadLlamaModelDir(dir);
  ASSERT_FALSE(weights.ok());
  EXPECT_NE(weights.status().message().find("model-00002-of-00002.safetensors"),
            std::string::npos)
      << weights.status();
}

// Greedy generation through the scheduler of a non-Llama-2 family, first
// as golden.json has it, then with a generation_config.json that lists one
// of those tokens as an end-of-turn id: generation stops there, as EOS.
GenerationResult Generate(const std::string& dir, const std::vector<int>& prompt_ids,
                          int max_new_tokens) {
  auto weights = LoadLlamaModelDir(dir);
  EXPECT_TRUE(weights.ok()) << weights.status();
  auto tokenizer = Tokenizer::Load(dir + "/tokenizer.model");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (!weights.ok() || !tokenizer.ok()) return {};
  std::shared_ptr<const Tokenizer> shared_tokenizer(std::move(*tokenizer));
  const std::string prompt = shared_tokenizer->Decode(
      absl::MakeConstSpan(prompt_ids).subspan(1));  // without BOS, which Submit adds
  auto ids = shared_tokenizer->Encode(prompt, /*add_bos=*/true);
  EXPECT_TRUE(ids.ok() && *ids == prompt_ids) << prompt;
  GenerationScheduler scheduler(std::make_shared<const LlamaModel>(*weights), shared_tokenizer,
                                {});
  GenerationParams params;
  params.max_new_tokens = max_new_tokens;
  return test::GenerateAndWait(scheduler, prompt, params);
}

TEST(GenerationConfig, EndOfTurnIdsStopGeneration) {
  const nlohmann::json golden = Golden("tiny-qwen3");
  const std::vector<int> prompt = golden["greedy_prompt_ids"].get<std::vector<int>>();
  const std::vector<int> greedy = golden["greedy_ids"].get<std::vector<int>>();
  const std::string dir = ::testing::TempDir() + "/generation_config";
  std::filesystem::create_directories(dir);
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.model"}) {
    std::filesystem::copy_file(SharedModelDir("tiny-qwen3") + "/" + file, dir + "/" + file,
                               std::filesystem::copy_options::overwrite_existing);
  }
  const GenerationResult plain = Generate(dir, prompt, static_cast<int>(greedy.size()));
  EXPECT_EQ(plain.token_ids, greedy);
  EXPECT_EQ(plain.finish_reason, FinishReason::kLength);

  const int end_of_turn = greedy[3];
  ASSERT_EQ(std::find(greedy.begin(), greedy.begin() + 3, end_of_turn), greedy.begin() + 3);
  ASSERT_TRUE(WriteFileDurably(dir + "/generation_config.json",
                               absl::StrCat(R"({"eos_token_id": [2, )", end_of_turn, "]}"))
                  .ok());
  const GenerationResult stopped = Generate(dir, prompt, static_cast<int>(greedy.size()));
  EXPECT_EQ(stopped.token_ids, std::vector<int>(greedy.begin(), greedy.begin() + 4));
  EXPECT_EQ(stopped.finish_reason, FinishReason::kEos);

  ASSERT_TRUE(WriteFileDurably(dir + "/generation_config.json", R"({"eos_token_id": 100000})").ok());
  auto refused = LoadLlamaModelDir(dir);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("generation_config.json"), std::string::npos)
      << refused.status();
}

}  // namespace
}  // namespace wq

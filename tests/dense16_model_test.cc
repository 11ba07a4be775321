// An unquantized bf16 or f16 checkpoint served as stored
// (HalfWeights::kServeAsStored: 16-bit linears, embedding and lm_head; bf16
// compute for bf16, fp32 for f16) against the same checkpoint converted to
// fp32 (the path the service took before): the same greedy tokens and logits
// within bf16 activation rounding (f16: within fp32 reassociation) on
// stories260K, and about half the memory on a larger synthetic model.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/synthetic_model.h"
#include "common/kernels/cpu_features.h"
#include "common/model/llama.h"
#include "common/io/process_memory.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model_test_util.h"
#include "tests/rounded_checkpoint.h"
#include "tests/test_util.h"

namespace wq {
namespace {

// The 16-bit matrix of `l` in `dtype`, null when it is another kind.
const uint16_t* Dense16(const LinearWeight& l, DType dtype) {
  return dtype == DType::kBF16 ? l.dense_bf16() : l.dense_f16();
}

// stories260K in `dtype` (two shards, as Hugging Face writes them) served as
// stored against its fp32 conversion; logits within `tolerance` of the
// largest |logit|.
void ExpectServedMatchesConverted(DType dtype, double tolerance) {
  const std::string dir = ::testing::TempDir() + "/stories260K_" + std::string(DTypeName(dtype));
  ASSERT_TRUE(WriteRoundedCopy(test::kStoriesDir, dir, dtype, /*sharded=*/true).ok());
  auto served = LoadLlamaModelDir(dir, FileBacking::kCopied, HalfWeights::kServeAsStored);
  ASSERT_TRUE(served.ok()) << served.status();
  auto converted = LoadLlamaModelDir(dir, FileBacking::kCopied);
  ASSERT_TRUE(converted.ok()) << converted.status();
  // Every matrix stays 16-bit: the linears, the embedding and the tied or
  // separate lm_head.
  const LlamaWeights& w = **served;
  EXPECT_NE(Dense16(w.embed, dtype), nullptr);
  EXPECT_NE(Dense16(w.lm_head, dtype), nullptr);
  for (const LlamaLayerWeights& layer : w.layers) {
    for (const LinearWeight& l : layer.linear) {
      if (l.out_features() > 0) {
        EXPECT_NE(Dense16(l, dtype), nullptr);
      }
    }
  }
  EXPECT_EQ(w.StorageBytes() * 2 - (*converted)->StorageBytes(),
            // norms stay fp32 in both
            (w.config.num_hidden_layers * 2 + 1) * w.config.hidden_size * 4);

  const nlohmann::json golden = test::ReadJson(std::string(test::kStoriesDir) + "/golden.json");
  const std::vector<int> prompt = golden["prompt_ids"].get<std::vector<int>>();
  const int tokens = static_cast<int>(golden["greedy_ids"].size());

  std::vector<float> reference_logits;
  const std::vector<int> reference =
      test::GreedyTokens(LlamaModel(*converted), prompt, tokens, &reference_logits);
  // The best kernel (vdpbf16ps on AVX512_BF16), the AVX2 widening one and the
  // scalar reference.
  std::vector<Isa> isas = {BestSupportedIsa(), Isa::kScalar};
  if (CpuSupports(Isa::kAvx2) && BestSupportedIsa() != Isa::kAvx2) isas.push_back(Isa::kAvx2);
  for (const Isa isa : isas) {
    ScopedIsaOverride forced(isa);
    std::vector<float> logits;
    EXPECT_EQ(test::GreedyTokens(LlamaModel(*served), prompt, tokens, &logits), reference) << IsaName(isa);
    ASSERT_EQ(logits.size(), reference_logits.size());
    const double worst = test::MaxAbsDifference(logits, reference_logits);
    double largest = 0;
    for (float v : reference_logits) largest = std::max(largest, double{std::abs(v)});
    std::printf("%s %s: served as stored, logits move by at most %.6f (largest |logit| %.2f) "
                "over %d greedy steps\n",
                std::string(DTypeName(dtype)).c_str(), std::string(IsaName(isa)).c_str(), worst,
                largest, tokens);
    EXPECT_LT(worst, tolerance * largest) << IsaName(isa);
  }
}

TEST(Dense16Model, Stories260KServedAsBf16MatchesItsFp32Conversion) {
  // Rounding activations to bf16 (8 significant bits) before every linear:
  // measured 0.057-0.071 with |logits| up to 22.
  ExpectServedMatchesConverted(DType::kBF16, 0.006);
}

TEST(Dense16Model, Stories260KServedAsF16MatchesItsFp32Conversion) {
  // The same fp32 products summed in another order.
  ExpectServedMatchesConverted(DType::kF16, 1e-5);
}

// Anonymous memory a load adds (RssAnon: the copied file and any fp32
// copies), with the weights still held.
int64_t LoadedAnonBytes(const std::string& dir, HalfWeights bf16) {
  const int64_t before = AnonymousResidentBytes();
  auto weights = LoadLlamaModelDir(dir, FileBacking::kCopied, bf16);
  EXPECT_TRUE(weights.ok()) << weights.status();
  return AnonymousResidentBytes() - before;
}

TEST(Dense16Model, Served16BitCheckpointTakesHalfTheMemoryOfFp32) {
  LlamaConfig c;
  c.hidden_size = 512;
  c.intermediate_size = 1536;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 8;
  c.head_dim = 64;
  c.vocab_size = 8192;
  c.max_position_embeddings = 256;
  const std::string root = ::testing::TempDir() + "/dense_bf16_memory";
  for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    bench::SyntheticOptions options;
    options.dtype = dtype;
    ASSERT_TRUE(bench::WriteSyntheticModel(c, options,
                                           std::string(test::kStoriesDir) + "/tokenizer.model",
                                           root + "/" + std::string(DTypeName(dtype)))
                    .ok());
  }
  const int64_t bf16 = LoadedAnonBytes(root + "/BF16", HalfWeights::kServeAsStored);
  const int64_t f16 = LoadedAnonBytes(root + "/F16", HalfWeights::kServeAsStored);
  const int64_t bf16_as_fp32 = LoadedAnonBytes(root + "/BF16", HalfWeights::kToF32);
  const int64_t fp32 = LoadedAnonBytes(root + "/F32", HalfWeights::kToF32);
  const double params = 2.0 * c.vocab_size * c.hidden_size +
                        c.num_hidden_layers * (4.0 * c.hidden_size * c.hidden_size +
                                               3.0 * c.hidden_size * c.intermediate_size);
  std::printf("%.1f M parameters: RssAnon added by the load: fp32 checkpoint %.1f MB, bf16 "
              "served as bf16 %.1f MB (%.2f x), f16 served as f16 %.1f MB (%.2f x), bf16 "
              "converted to fp32 %.1f MB (%.2f x)\n",
              params / 1e6, fp32 / 1e6, bf16 / 1e6, static_cast<double>(bf16) / fp32,
              f16 / 1e6, static_cast<double>(f16) / fp32, bf16_as_fp32 / 1e6,
              static_cast<double>(bf16_as_fp32) / fp32);
  EXPECT_NEAR(static_cast<double>(fp32), 4 * params, 0.1 * 4 * params);
  EXPECT_NEAR(static_cast<double>(bf16) / fp32, 0.5, 0.08);
  EXPECT_NEAR(static_cast<double>(f16) / fp32, 0.5, 0.08);
  // Before: the file's bf16 copy and the fp32 one.
  EXPECT_NEAR(static_cast<double>(bf16_as_fp32) / fp32, 1.5, 0.15);
}

}  // namespace
}  // namespace wq

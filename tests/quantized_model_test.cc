// RTN g32 on stories260K, quantized into an artifact and loaded back:
//  * every weight dtype, scheme and scale variant: the manifest says what was
//    done, and the decode kernels (fp32 compute, on the packed tiles where
//    the format has them) pick the scalar reference's 32 greedy tokens;
//  * the perplexity protocol (first 20,480 tokens of tinystories_valid.txt,
//    80 windows of 256, each fed as [BOS] + window[:-1]) on fp32 against its
//    reference, and on two representative dtypes against an independent
//    float64 implementation of neural-compressor's numerics: int4_clip sym
//    (integer codes, the largest RTN error) and nf4 (a codebook, the default
//    dtype).
// The accuracy table of every dtype, scheme and variant (and the checks
// between its rows) is bench/quality's: bench/results/quality_after_test_move.md.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_format.h"
#include "common/artifact/artifact_store.h"
#include "common/kernels/cpu_features.h"
#include "common/io/file_util.h"
#include "common/model/llama.h"
#include "common/quant/perplexity.h"
#include "common/quant/quantizer.h"
#include "common/serving/scheduler.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/model_test_util.h"
#include "tests/test_util.h"

namespace wq {
namespace {

constexpr double kReferenceFp32Ppl = 4.5885;

enum class Variant { kPlain, kMseRange, kDoubleQuant, kBf16Scale };

struct Case {
  v1::WeightDtype dtype;
  v1::Scheme scheme;
  Variant variant = Variant::kPlain;
};

std::string Name(const Case& c) {
  static const char* const kVariant[] = {"", "_mse_range", "_double_quant", "_bf16_scale"};
  return absl::StrFormat("%s_%s%s", v1::WeightDtype_Name(c.dtype), v1::Scheme_Name(c.scheme),
                         kVariant[static_cast<int>(c.variant)]);
}

// One artifact store for the whole binary, each case quantized into it once;
// the tokenizer; the evaluation ids and the fp32 perplexity, on first use.
class StoriesTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (store_ != nullptr) return;
    auto tokenizer = Tokenizer::Load(std::string(test::kStoriesDir) + "/tokenizer.model");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = new std::shared_ptr<const Tokenizer>(std::move(*tokenizer));
    const std::string root = testing::TempDir() + "/artifacts";
    std::filesystem::remove_all(root);
    auto store = ArtifactStore::Open(root);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = store->release();
    manifests_ = new std::map<std::string, v1::ArtifactManifest>();
  }

  static const Tokenizer& tokenizer() { return **tokenizer_; }

  static const std::vector<int>& EvalIds() {
    static const std::vector<int>* ids = [] {
      auto text = ReadFile(std::string(test::kTestDataDir) + "/tinystories_valid.txt");
      EXPECT_TRUE(text.ok()) << text.status();
      auto ids = tokenizer().Encode(text.ok() ? *text : "", /*add_bos=*/false);
      EXPECT_TRUE(ids.ok()) << ids.status();
      return new std::vector<int>(ids.ok() ? *std::move(ids) : std::vector<int>());
    }();
    return *ids;
  }

  static absl::StatusOr<PerplexityResult> Perplexity(const LlamaModel& model) {
    return EvaluatePerplexity(model, EvalIds(), tokenizer().bos_id(), {});
  }

  static const PerplexityResult& Fp32Perplexity() {
    static const PerplexityResult* fp32 = [] {
      auto weights = LoadLlamaModelDir(test::kStoriesDir);
      EXPECT_TRUE(weights.ok()) << weights.status();
      if (!weights.ok()) return new PerplexityResult();
      auto ppl = Perplexity(LlamaModel(*weights));
      EXPECT_TRUE(ppl.ok()) << ppl.status();
      return new PerplexityResult(ppl.ok() ? *std::move(ppl) : PerplexityResult());
    }();
    return *fp32;
  }

  // The manifest of `c`'s artifact in the store, quantized on first use.
  static absl::StatusOr<v1::ArtifactManifest> Quantized(const Case& c) {
    const std::string name = Name(c);
    if (auto it = manifests_->find(name); it != manifests_->end()) return it->second;
    QuantizeRequest request;
    request.model_id = "stories260K";
    request.model_dir = test::kStoriesDir;
    request.config.set_weight_dtype(c.dtype);
    request.config.set_scheme(c.scheme);
    request.config.set_group_size(32);
    request.config.set_mse_range(c.variant == Variant::kMseRange);
    request.config.set_use_double_quant(c.variant == Variant::kDoubleQuant);
    if (c.variant == Variant::kBf16Scale) request.config.set_scale_dtype(v1::SCALE_BF16);
    auto manifest = QuantizeModel(request, *store_);
    if (manifest.ok()) (*manifests_)[name] = *manifest;
    return manifest;
  }

  static absl::StatusOr<std::shared_ptr<const LlamaModel>> Load(
      const v1::ArtifactManifest& manifest) {
    auto weights = store_->LoadWeights(manifest.artifact_id());
    if (!weights.ok()) return weights.status();
    return std::make_shared<const LlamaModel>(*weights);
  }

  // 32 greedy tokens after "Once upon a time", through the real scheduler.
  static GenerationResult Greedy(std::shared_ptr<const LlamaModel> model) {
    GenerationScheduler scheduler(std::move(model), *tokenizer_, {});
    GenerationParams params;
    params.max_new_tokens = 32;
    GenerationResult result = test::GenerateAndWait(scheduler, "Once upon a time", params);
    EXPECT_EQ(result.token_ids.size(), 32u);
    EXPECT_EQ(result.finish_reason, FinishReason::kLength);
    return result;
  }

  static std::shared_ptr<const Tokenizer>* tokenizer_;
  static ArtifactStore* store_;
  static std::map<std::string, v1::ArtifactManifest>* manifests_;
};

std::shared_ptr<const Tokenizer>* StoriesTest::tokenizer_;
ArtifactStore* StoriesTest::store_;
std::map<std::string, v1::ArtifactManifest>* StoriesTest::manifests_;

TEST_F(StoriesTest, Fp32PerplexityMatchesReference) {
  const PerplexityResult& ppl = Fp32Perplexity();
  EXPECT_EQ(ppl.windows, 80);
  EXPECT_EQ(ppl.scored_tokens, 20480);
  std::printf("fp32 PPL %.4f (reference %.4f)\n", ppl.perplexity, kReferenceFp32Ppl);
  EXPECT_NEAR(ppl.perplexity, kReferenceFp32Ppl, kReferenceFp32Ppl * 0.001);
  ASSERT_EQ(ppl.window_mean_nll.size(), 80u);
  double sum = 0;
  for (double nll : ppl.window_mean_nll) sum += nll;
  EXPECT_NEAR(sum / 80, ppl.mean_nll, 1e-12);
  // A model against itself: ratio 1 with an interval of zero width.
  const PerplexityRatio same = PairedPerplexityRatio(ppl, ppl);
  EXPECT_EQ(same.ratio, 1.0);
  EXPECT_EQ(same.low, 1.0);
  EXPECT_EQ(same.high, 1.0);
}

TEST(PairedPerplexityRatioTest, RatioAndInterval) {
  PerplexityResult a, b;
  // Differences 0.1 and 0.3 per window: mean 0.2, sample variance 0.04 / 3.
  a.window_mean_nll = {1.1, 2.3, 1.1, 2.3};
  b.window_mean_nll = {1.0, 2.0, 1.0, 2.0};
  const PerplexityRatio r = PairedPerplexityRatio(a, b);
  const double half = 1.96 * std::sqrt(0.04 / 3) / std::sqrt(4.0);
  EXPECT_NEAR(r.ratio, std::exp(0.2), 1e-12);
  EXPECT_NEAR(r.low, std::exp(0.2 - half), 1e-12);
  EXPECT_NEAR(r.high, std::exp(0.2 + half), 1e-12);
  // Fewer than two windows: no interval can be given.
  a.window_mean_nll = {1.0};
  EXPECT_EQ(PairedPerplexityRatio(a, b).ratio, 1.0);
}

class QuantizedModelTest : public StoriesTest, public testing::WithParamInterface<Case> {};

TEST_P(QuantizedModelTest, QuantizeLoadAndDecodeLikeTheScalarReference) {
  const Case& c = GetParam();
  auto manifest = Quantized(c);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  // q/k/v/o/gate/up/down of 5 blocks quantized; embeddings and lm_head fp32.
  int quantized = 0;
  for (const auto& t : manifest->tensors()) {
    quantized += t.quantized();
    if (t.module() == "lm_head" || t.module() == "model.embed_tokens") {
      EXPECT_FALSE(t.quantized());
    }
    if (!t.quantized()) continue;
    EXPECT_EQ(t.double_quant(), c.variant == Variant::kDoubleQuant);
    EXPECT_EQ(t.scale_dtype(),
              c.variant == Variant::kBf16Scale ? v1::SCALE_BF16 : v1::SCALE_FP32);
    if (c.variant == Variant::kMseRange) {
      EXPECT_GE(t.clip_ratio(), 0.805f);
      EXPECT_LE(t.clip_ratio(), 1.0f);
    } else {
      EXPECT_EQ(t.clip_ratio(), 1.0f);
    }
  }
  EXPECT_EQ(quantized, 35);
  EXPECT_EQ(manifest->format_version(), 2);  // 3 only with int8 tiles
  EXPECT_TRUE(store_->Verify(manifest->artifact_id()).ok());

  if (c.variant != Variant::kPlain) {
    auto plain = Quantized({c.dtype, c.scheme});
    ASSERT_TRUE(plain.ok()) << plain.status();
    const double bits = manifest->bits_per_weight(), plain_bits = plain->bits_per_weight();
    switch (c.variant) {
      case Variant::kMseRange:
        EXPECT_EQ(bits, plain_bits);
        EXPECT_NE(std::find_if(manifest->log().begin(), manifest->log().end(),
                               [](const std::string& l) {
                                 return l.rfind("mse_range clip ratios: ", 0) == 0;
                               }),
                  manifest->log().end());
        break;
      case Variant::kDoubleQuant:
        EXPECT_LT(bits, plain_bits - 0.6);
        break;
      case Variant::kBf16Scale:
        // Half of the 32 scale bits per group (a little over 0.5: ragged groups).
        EXPECT_NEAR(bits, plain_bits - 0.5, 0.02);
        break;
      case Variant::kPlain:
        break;
    }
  }

  auto model = Load(*manifest);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->weights().layers[0].linear[kDown].quantized());
  EXPECT_EQ((*model)->weights().layers[0].linear[kDown].compute_dtype(), ComputeDtype::kFp32);
  const GenerationResult kernels = Greedy(*model);
  EXPECT_FALSE(kernels.text.empty());
  ScopedIsaOverride scalar(Isa::kScalar);
  const GenerationResult reference = Greedy(*model);
  EXPECT_EQ(kernels.token_ids, reference.token_ids);
  std::printf("%-34s %.3f bits/w: %s\n", Name(c).c_str(), manifest->bits_per_weight(),
              kernels.text.c_str());
}

INSTANTIATE_TEST_SUITE_P(
    AllDtypes, QuantizedModelTest,
    testing::Values(Case{v1::INT8, v1::SYM}, Case{v1::INT8, v1::ASYM},
                    Case{v1::INT4_CLIP, v1::SYM}, Case{v1::INT4_FULLRANGE, v1::SYM},
                    Case{v1::INT4_CLIP, v1::ASYM}, Case{v1::INT4_FULLRANGE, v1::ASYM},
                    Case{v1::NF4, v1::SYM}, Case{v1::FP4_E2M1, v1::SYM},
                    Case{v1::INT3, v1::SYM}, Case{v1::INT3, v1::ASYM},
                    Case{v1::INT2, v1::SYM}, Case{v1::INT2, v1::ASYM},
                    Case{v1::INT4_CLIP, v1::SYM, Variant::kMseRange},
                    Case{v1::INT4_CLIP, v1::SYM, Variant::kDoubleQuant},
                    Case{v1::INT4_CLIP, v1::SYM, Variant::kBf16Scale}),
    [](const testing::TestParamInfo<Case>& info) { return Name(info.param); });

// Perplexity change against the float64 reference of INC's numerics.
struct ReferenceCase {
  Case c;
  double reference_change_percent;
};

class QuantizedPerplexityTest : public StoriesTest,
                                public testing::WithParamInterface<ReferenceCase> {};

TEST_P(QuantizedPerplexityTest, ChangeMatchesTheFloat64Reference) {
  const ReferenceCase& r = GetParam();
  auto manifest = Quantized(r.c);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  auto model = Load(*manifest);
  ASSERT_TRUE(model.ok()) << model.status();
  auto ppl = Perplexity(**model);
  ASSERT_TRUE(ppl.ok()) << ppl.status();
  const PerplexityResult& fp32 = Fp32Perplexity();
  ASSERT_GT(fp32.perplexity, 0);
  const double change = 100.0 * (ppl->perplexity / fp32.perplexity - 1.0);
  std::printf("%s: PPL %.4f, change %+.2f%% (reference %+.2f%%), top-1 %.1f%%\n",
              Name(r.c).c_str(), ppl->perplexity, change, r.reference_change_percent,
              100.0 * Top1Agreement(ppl->argmax, fp32.argmax));
  EXPECT_LT(change, 20.0);
  // Same numerics as neural-compressor: close to the float64 reference.
  EXPECT_NEAR(change, r.reference_change_percent, 0.5 + 0.1 * r.reference_change_percent);
}

INSTANTIATE_TEST_SUITE_P(
    Representative, QuantizedPerplexityTest,
    testing::Values(ReferenceCase{{v1::INT4_CLIP, v1::SYM}, 14.5},
                    ReferenceCase{{v1::NF4, v1::SYM}, 10.1}),
    [](const testing::TestParamInfo<ReferenceCase>& info) { return Name(info.param.c); });

}  // namespace
}  // namespace wq

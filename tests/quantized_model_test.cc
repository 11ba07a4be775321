// RTN g32 on stories260K for every weight dtype and scheme: quantize into an
// artifact, load it back, generate, and measure perplexity with the project's
// protocol (first 20,480 tokens of tinystories_valid.txt, 80 windows of 256,
// each fed as [BOS] + window[:-1]). The reference values come from an
// independent float64 implementation of neural-compressor's numerics; the
// int3/int2 rows and the mse_range / double quant / bf16 scale variants have
// none and are checked against each other and the plain int4_clip row.
#include <cmath>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>

#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "common/artifact/artifact_store.h"
#include "common/kernels/cpu_features.h"
#include "common/io/file_util.h"
#include "common/model/llama.h"
#include "common/quant/perplexity.h"
#include "common/quant/quantizer.h"
#include "common/serving/scheduler.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace wq {
namespace {

constexpr char kModelDir[] = "testdata/models/stories260K";
constexpr char kEvalText[] = "testdata/data/tinystories_valid.txt";
constexpr double kReferenceFp32Ppl = 4.5885;

constexpr double kNoReference = std::numeric_limits<double>::quiet_NaN();

enum class Variant { kPlain, kMseRange, kDoubleQuant, kBf16Scale };

struct Case {
  v1::WeightDtype dtype;
  v1::Scheme scheme;
  double reference_change_percent;  // float64 reference of INC's numerics
  Variant variant = Variant::kPlain;
};

std::string VariantName(Variant v) {
  switch (v) {
    case Variant::kPlain: return "";
    case Variant::kMseRange: return "_mse_range";
    case Variant::kDoubleQuant: return "_double_quant";
    case Variant::kBf16Scale: return "_bf16_scale";
  }
  return "";
}

std::string Name(const Case& c) {
  return absl::StrFormat("%s_%s%s", v1::WeightDtype_Name(c.dtype), v1::Scheme_Name(c.scheme),
                         VariantName(c.variant));
}

std::string CaseName(const testing::TestParamInfo<Case>& info) { return Name(info.param); }

// What one case measured.
struct Outcome {
  v1::ArtifactManifest manifest;
  double perplexity = 0;
  double change_percent = 0;
  double top1_percent = 0;  // greedy agreement with fp32
};

class QuantizedModelTest : public testing::TestWithParam<Case> {
 protected:
  static void SetUpTestSuite() {
    auto tokenizer = Tokenizer::Load(std::string(kModelDir) + "/tokenizer.model");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::shared_ptr<Tokenizer>(std::move(*tokenizer));
    auto text = ReadFile(kEvalText);
    ASSERT_TRUE(text.ok()) << text.status();
    auto ids = tokenizer_->Encode(*text, /*add_bos=*/false);
    ASSERT_TRUE(ids.ok());
    eval_ids_ = new std::vector<int>(std::move(*ids));

    auto weights = LoadLlamaModelDir(kModelDir);
    ASSERT_TRUE(weights.ok()) << weights.status();
    fp32_model_ = new LlamaModel(*weights);
    auto fp32 = EvaluatePerplexity(*fp32_model_, *eval_ids_, tokenizer_->bos_id(), {});
    ASSERT_TRUE(fp32.ok()) << fp32.status();
    fp32_ = new PerplexityResult(*std::move(fp32));
    fp32_greedy_ = new std::string(Greedy(*fp32_model_));

    store_root_ = new std::string(testing::TempDir() + "/artifacts");
    std::filesystem::remove_all(*store_root_);
    auto store = ArtifactStore::Open(*store_root_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = store->release();
    table_ = new std::vector<std::string>();
    outcomes_ = new std::map<std::string, Outcome>();
  }

  static void TearDownTestSuite() {
    std::printf("\nPerplexity, RTN on stories260K (%d windows x 256 tokens of %s)\n",
                fp32_->windows, kEvalText);
    std::printf("%-30s %5s %8s %8s %8s %9s %6s\n", "dtype_scheme[_variant]", "group",
                "bits/w", "PPL", "change", "reference", "top-1");
    std::printf("%-30s %5s %8s %8.4f %8s %9s %6s\n", "fp32", "-", "32", fp32_->perplexity, "-",
                "4.5885", "100%");
    for (const std::string& row : *table_) std::printf("%s\n", row.c_str());
    std::printf("greedy fp32: %s\n", fp32_greedy_->c_str());
  }

  // 32 greedy tokens after "Once upon a time", through the real scheduler.
  static std::string Greedy(const LlamaModel& model) {
    auto shared = std::shared_ptr<const LlamaModel>(&model, [](const LlamaModel*) {});
    GenerationScheduler scheduler(shared, tokenizer_, {});
    GenerationParams params;
    params.max_new_tokens = 32;
    absl::Notification done;
    GenerationResult result;
    auto handle = scheduler.Submit("Once upon a time", params,
                                   {nullptr, [&](const GenerationResult& r) {
                                      result = r;
                                      done.Notify();
                                    }});
    EXPECT_TRUE(handle.ok()) << handle.status();
    done.WaitForNotification();
    EXPECT_EQ(result.token_ids.size(), 32u);
    EXPECT_EQ(result.finish_reason, FinishReason::kLength);
    return result.text;
  }

  static std::shared_ptr<Tokenizer> tokenizer_;
  static std::vector<int>* eval_ids_;
  static LlamaModel* fp32_model_;
  static PerplexityResult* fp32_;
  static std::string* fp32_greedy_;
  static std::string* store_root_;
  static ArtifactStore* store_;
  static std::vector<std::string>* table_;
  static std::map<std::string, Outcome>* outcomes_;

  static Outcome Run(const Case& c);
};

std::shared_ptr<Tokenizer> QuantizedModelTest::tokenizer_;
std::vector<int>* QuantizedModelTest::eval_ids_;
LlamaModel* QuantizedModelTest::fp32_model_;
PerplexityResult* QuantizedModelTest::fp32_;
std::string* QuantizedModelTest::fp32_greedy_;
std::string* QuantizedModelTest::store_root_;
ArtifactStore* QuantizedModelTest::store_;
std::vector<std::string>* QuantizedModelTest::table_;
std::map<std::string, Outcome>* QuantizedModelTest::outcomes_;

TEST(Fp32PerplexityTest, MatchesReference) {
  auto tokenizer = Tokenizer::Load(std::string(kModelDir) + "/tokenizer.model");
  ASSERT_TRUE(tokenizer.ok());
  auto text = ReadFile(kEvalText);
  ASSERT_TRUE(text.ok());
  auto ids = (*tokenizer)->Encode(*text, false);
  ASSERT_TRUE(ids.ok());
  auto weights = LoadLlamaModelDir(kModelDir);
  ASSERT_TRUE(weights.ok());
  LlamaModel model(*weights);
  auto ppl = EvaluatePerplexity(model, *ids, (*tokenizer)->bos_id(), {});
  ASSERT_TRUE(ppl.ok()) << ppl.status();
  EXPECT_EQ(ppl->windows, 80);
  EXPECT_EQ(ppl->scored_tokens, 20480);
  std::printf("fp32 PPL %.4f (reference %.4f)\n", ppl->perplexity, kReferenceFp32Ppl);
  EXPECT_NEAR(ppl->perplexity, kReferenceFp32Ppl, kReferenceFp32Ppl * 0.001);
  ASSERT_EQ(ppl->window_mean_nll.size(), 80u);
  double sum = 0;
  for (double nll : ppl->window_mean_nll) sum += nll;
  EXPECT_NEAR(sum / 80, ppl->mean_nll, 1e-12);
  // A model against itself: ratio 1 with an interval of zero width.
  const PerplexityRatio same = PairedPerplexityRatio(*ppl, *ppl);
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

// Quantizes, loads, generates and scores `c` once; later calls (a variant
// comparing against its plain row) reuse the result.
Outcome QuantizedModelTest::Run(const Case& c) {
  const std::string name = Name(c);
  if (auto it = outcomes_->find(name); it != outcomes_->end()) return it->second;
  Outcome out;
  QuantizeRequest request;
  request.model_id = "stories260K";
  request.model_dir = kModelDir;
  request.config.set_weight_dtype(c.dtype);
  request.config.set_scheme(c.scheme);
  request.config.set_group_size(32);
  request.config.set_mse_range(c.variant == Variant::kMseRange);
  request.config.set_use_double_quant(c.variant == Variant::kDoubleQuant);
  if (c.variant == Variant::kBf16Scale) request.config.set_scale_dtype(v1::SCALE_BF16);
  auto manifest = QuantizeModel(request, *store_);
  EXPECT_TRUE(manifest.ok()) << manifest.status();
  if (!manifest.ok()) return out;
  out.manifest = *manifest;
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

  auto weights = store_->LoadWeights(manifest->artifact_id());
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return out;
  LlamaModel model(*weights);
  EXPECT_TRUE(model.weights().layers[0].linear[kDown].quantized());
  const std::string text = Greedy(model);
  EXPECT_FALSE(text.empty());
  {
    // The decode kernels (fp32 compute, on the packed tiles where the format
    // has them) pick the same tokens as the scalar reference arithmetic.
    EXPECT_EQ(model.weights().layers[0].linear[kDown].compute_dtype(), ComputeDtype::kFp32);
    ScopedIsaOverride scalar(Isa::kScalar);
    EXPECT_EQ(Greedy(model), text);
  }

  auto ppl = EvaluatePerplexity(model, *eval_ids_, tokenizer_->bos_id(), {});
  EXPECT_TRUE(ppl.ok()) << ppl.status();
  if (!ppl.ok()) return out;
  out.perplexity = ppl->perplexity;
  out.change_percent = 100.0 * (ppl->perplexity / fp32_->perplexity - 1.0);
  out.top1_percent = 100.0 * Top1Agreement(ppl->argmax, fp32_->argmax);
  table_->push_back(absl::StrFormat(
      "%-30s %5d %8.3f %8.4f %+7.2f%% %9s %5.1f%%  %s", name, 32,
      manifest->bits_per_weight(), ppl->perplexity, out.change_percent,
      std::isnan(c.reference_change_percent)
          ? std::string("-")
          : absl::StrFormat("%+.2f%%", c.reference_change_percent),
      out.top1_percent, text.c_str()));
  std::printf("%s\n", table_->back().c_str());
  (*outcomes_)[name] = out;
  return out;
}

TEST_P(QuantizedModelTest, QuantizeLoadGenerateAndScore) {
  const Case& c = GetParam();
  const Outcome out = Run(c);
  ASSERT_TRUE(std::isfinite(out.perplexity) && out.perplexity > 0);
  const double change = out.change_percent;
  if (c.variant != Variant::kPlain) {
    const Outcome plain = Run({c.dtype, c.scheme, kNoReference});
    // The scale encodings cost little accuracy; the clip search only
    // lowers the weight error, so it must not cost perplexity either.
    EXPECT_LE(change, plain.change_percent + 1.0);
    if (c.variant == Variant::kMseRange) {
      EXPECT_LE(change, plain.change_percent + 0.1);
      EXPECT_NE(std::find_if(out.manifest.log().begin(), out.manifest.log().end(),
                             [](const std::string& l) {
                               return l.rfind("mse_range clip ratios: ", 0) == 0;
                             }),
                out.manifest.log().end());
    }
    if (c.variant == Variant::kDoubleQuant) {
      EXPECT_LT(out.manifest.bits_per_weight(), plain.manifest.bits_per_weight() - 0.6);
    }
    if (c.variant == Variant::kBf16Scale) {
      // Half of the 32 scale bits per group (a little over 0.5: ragged groups).
      EXPECT_NEAR(out.manifest.bits_per_weight(), plain.manifest.bits_per_weight() - 0.5, 0.02);
    }
  }
  if (c.dtype == v1::INT2) {
    // Fewer bits, more error.
    EXPECT_LT(Run({v1::INT3, c.scheme, kNoReference}).perplexity, out.perplexity);
  }
  if (std::isnan(c.reference_change_percent)) return;
  if (c.dtype == v1::INT8) {
    EXPECT_LT(change, 1.0);
    EXPECT_GE(out.top1_percent, 97.0);
  } else {
    EXPECT_LT(change, 20.0);
  }
  // Same numerics as neural-compressor: close to the float64 reference.
  EXPECT_NEAR(change, c.reference_change_percent, 0.5 + 0.1 * c.reference_change_percent);
}

INSTANTIATE_TEST_SUITE_P(
    AllDtypes, QuantizedModelTest,
    testing::Values(Case{v1::INT8, v1::SYM, 0.10}, Case{v1::INT8, v1::ASYM, 0.02},
                    Case{v1::INT4_CLIP, v1::SYM, 14.5}, Case{v1::INT4_FULLRANGE, v1::SYM, 7.1},
                    Case{v1::INT4_CLIP, v1::ASYM, 7.9}, Case{v1::INT4_FULLRANGE, v1::ASYM, 7.9},
                    Case{v1::NF4, v1::SYM, 10.1}, Case{v1::FP4_E2M1, v1::SYM, 16.2},
                    Case{v1::INT3, v1::SYM, kNoReference}, Case{v1::INT3, v1::ASYM, kNoReference},
                    Case{v1::INT2, v1::SYM, kNoReference}, Case{v1::INT2, v1::ASYM, kNoReference},
                    Case{v1::INT4_CLIP, v1::SYM, kNoReference, Variant::kMseRange},
                    Case{v1::INT4_CLIP, v1::SYM, kNoReference, Variant::kDoubleQuant},
                    Case{v1::INT4_CLIP, v1::SYM, kNoReference, Variant::kBf16Scale}),
    CaseName);

}  // namespace
}  // namespace wq

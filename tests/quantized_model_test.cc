// RTN g32 on stories260K for every weight dtype and scheme: quantize into an
// artifact, load it back, generate, and measure perplexity with the project's
// protocol (first 20,480 tokens of tinystories_valid.txt, 80 windows of 256,
// each fed as [BOS] + window[:-1]). The reference values come from an
// independent float64 implementation of neural-compressor's numerics.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "common/artifact_store.h"
#include "common/file_util.h"
#include "common/llama.h"
#include "common/perplexity.h"
#include "common/quantizer.h"
#include "common/scheduler.h"
#include "common/tokenizer.h"
#include "gtest/gtest.h"

namespace wq {
namespace {

constexpr char kModelDir[] = "testdata/models/stories260K";
constexpr char kEvalText[] = "testdata/data/tinystories_valid.txt";
constexpr double kReferenceFp32Ppl = 4.5885;

struct Case {
  v1::WeightDtype dtype;
  v1::Scheme scheme;
  double reference_change_percent;  // float64 reference of INC's numerics
};

std::string CaseName(const testing::TestParamInfo<Case>& info) {
  return absl::StrFormat("%s_%s", v1::WeightDtype_Name(info.param.dtype),
                         v1::Scheme_Name(info.param.scheme));
}

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
  }

  static void TearDownTestSuite() {
    std::printf("\nPerplexity, RTN on stories260K (%d windows x 256 tokens of %s)\n",
                fp32_->windows, kEvalText);
    std::printf("%-15s %-6s %5s %8s %8s %8s %9s %6s\n", "dtype", "scheme", "group", "bits/w",
                "PPL", "change", "reference", "top-1");
    std::printf("%-15s %-6s %5s %8s %8.4f %8s %9s %6s\n", "fp32", "-", "-", "32", fp32_->perplexity,
                "-", "4.5885", "100%");
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
};

std::shared_ptr<Tokenizer> QuantizedModelTest::tokenizer_;
std::vector<int>* QuantizedModelTest::eval_ids_;
LlamaModel* QuantizedModelTest::fp32_model_;
PerplexityResult* QuantizedModelTest::fp32_;
std::string* QuantizedModelTest::fp32_greedy_;
std::string* QuantizedModelTest::store_root_;
ArtifactStore* QuantizedModelTest::store_;
std::vector<std::string>* QuantizedModelTest::table_;

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
}

TEST_P(QuantizedModelTest, QuantizeLoadGenerateAndScore) {
  const Case& c = GetParam();
  QuantizeRequest request;
  request.model_id = "stories260K";
  request.model_dir = kModelDir;
  request.config.set_weight_dtype(c.dtype);
  request.config.set_scheme(c.scheme);
  request.config.set_group_size(32);
  auto manifest = QuantizeModel(request, *store_);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  // q/k/v/o/gate/up/down of 5 blocks quantized; embeddings and lm_head fp32.
  int quantized = 0;
  for (const auto& t : manifest->tensors()) {
    quantized += t.quantized();
    if (t.module() == "lm_head" || t.module() == "model.embed_tokens") EXPECT_FALSE(t.quantized());
  }
  EXPECT_EQ(quantized, 35);
  EXPECT_TRUE(store_->Verify(manifest->artifact_id()).ok());

  auto weights = store_->LoadWeights(manifest->artifact_id());
  ASSERT_TRUE(weights.ok()) << weights.status();
  LlamaModel model(*weights);
  EXPECT_TRUE(model.weights().layers[0].down.quantized());
  const std::string text = Greedy(model);
  EXPECT_FALSE(text.empty());

  auto ppl = EvaluatePerplexity(model, *eval_ids_, tokenizer_->bos_id(), {});
  ASSERT_TRUE(ppl.ok()) << ppl.status();
  const double change = 100.0 * (ppl->perplexity / fp32_->perplexity - 1.0);
  const double top1 = 100.0 * Top1Agreement(ppl->argmax, fp32_->argmax);
  table_->push_back(absl::StrFormat(
      "%-15s %-6s %5d %8.3f %8.4f %+7.2f%% %+8.2f%% %5.1f%%  %s",
      v1::WeightDtype_Name(c.dtype), v1::Scheme_Name(c.scheme), 32, manifest->bits_per_weight(),
      ppl->perplexity, change, c.reference_change_percent, top1, text.c_str()));
  std::printf("%s\n", table_->back().c_str());

  if (c.dtype == v1::INT8) {
    EXPECT_LT(change, 1.0);
    EXPECT_GE(top1, 97.0);
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
                    Case{v1::NF4, v1::SYM, 10.1}, Case{v1::FP4_E2M1, v1::SYM, 16.2}),
    CaseName);

}  // namespace
}  // namespace wq

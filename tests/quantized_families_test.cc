// Quantize -> store -> load -> generate for every family in architecture.h,
// on the team's tiny random checkpoints: RTN int8, RTN int4 g32 and AWQ int4
// g32 artifacts hold every block linear the description lists (biases and
// q/k norms stored fp32), verify, load, and agree with the fp32 model on the
// golden sequences. The table is printed. These random weights have small
// top-1 margins (int4 agrees on only 30-60 % of positions), so structure is
// checked by the logits' relative RMS error, which a missing bias, q/k norm
// or misplaced fused row would push to ~1.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "common/artifact/artifact_store.h"
#include "common/model/llama.h"
#include "common/quant/quantizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model_test_util.h"
#include "tests/test_util.h"

namespace wq {
namespace {

struct Case {
  std::string model;
  v1::WeightDtype dtype;
  v1::Algorithm algorithm;
  double max_relative_error;  // RMS(logits - fp32) / RMS(fp32)
};

std::string CaseName(const testing::TestParamInfo<Case>& info) {
  std::string name = absl::StrCat(info.param.model, "_", v1::WeightDtype_Name(info.param.dtype),
                                  "_", v1::Algorithm_Name(info.param.algorithm));
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

// Logits of every position of the golden sequences.
std::vector<float> AllLogits(const LlamaModel& model, const nlohmann::json& golden) {
  std::vector<float> out;
  for (const auto& s : golden["sequences"]) {
    const std::vector<float> logits =
        test::SequenceLogits(model, s["ids"].get<std::vector<int>>());
    out.insert(out.end(), logits.begin(), logits.end());
  }
  return out;
}

class QuantizedFamilyTest : public testing::TestWithParam<Case> {};

TEST_P(QuantizedFamilyTest, QuantizeLoadAndAgreeWithFp32) {
  const Case& c = GetParam();
  const std::string model_dir = test::SharedModelDir(c.model);
  auto store = ArtifactStore::Open(testing::TempDir() + "/artifacts_" + CaseName({c, 0}));
  ASSERT_TRUE(store.ok()) << store.status();
  QuantizeRequest request;
  request.model_id = c.model;
  request.model_dir = model_dir;
  request.data_root = test::CanonicalDataRoot(test::kSharedDataDir);
  request.config.set_weight_dtype(c.dtype);
  request.config.set_group_size(32);
  request.config.set_algorithm(c.algorithm);
  if (c.algorithm != v1::RTN) {
    request.config.mutable_calibration()->set_data_file("tinystories_train_head.txt");
    request.config.mutable_calibration()->set_n_samples(8);
    request.config.mutable_calibration()->set_seq_len(64);
  }
  auto manifest = QuantizeModel(request, **store);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ASSERT_TRUE((*store)->Verify(manifest->artifact_id()).ok());

  auto fp32 = LoadLlamaModelDir(model_dir);
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  const LlamaConfig& config = (*fp32)->config;
  int quantized = 0, biases = 0;
  for (const auto& t : manifest->tensors()) {
    quantized += t.quantized();
    biases += absl::EndsWith(t.module(), ".bias");
  }
  const std::vector<BlockLinearSpec> linears = BlockLinears(config);
  EXPECT_EQ(quantized, config.num_hidden_layers * static_cast<int>(linears.size()));
  int expected_biases = 0;
  for (const BlockLinearSpec& l : linears) expected_biases += l.bias;
  EXPECT_EQ(biases, config.num_hidden_layers * expected_biases);

  auto weights = (*store)->LoadWeights(manifest->artifact_id());
  ASSERT_TRUE(weights.ok()) << weights.status();
  const LlamaModel quantized_model(*weights);
  EXPECT_TRUE(quantized_model.weights().layers[0].linear[kDown].quantized());
  const LlamaModel reference(*fp32);

  const nlohmann::json golden = test::ReadJson(model_dir + "/golden.json");
  const std::vector<float> a = AllLogits(quantized_model, golden);
  const std::vector<float> b = AllLogits(reference, golden);
  ASSERT_EQ(a.size(), b.size());
  const int vocab = config.vocab_size;
  const size_t positions = a.size() / vocab;
  int agree = 0;
  double error = 0, energy = 0;
  for (size_t p = 0; p < positions; ++p) {
    const auto qa = a.begin() + p * vocab, fb = b.begin() + p * vocab;
    agree += std::max_element(qa, qa + vocab) - qa == std::max_element(fb, fb + vocab) - fb;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    error += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    energy += double{b[i]} * b[i];
  }
  const double relative = std::sqrt(error / energy);
  std::printf("| %s | %s | %s | %.3f | %.4f | %d/%zu |\n", c.model.c_str(),
              v1::WeightDtype_Name(c.dtype).c_str(), v1::Algorithm_Name(c.algorithm).c_str(),
              manifest->bits_per_weight(), relative, agree, positions);
  EXPECT_LT(relative, c.max_relative_error);
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (const char* model :
       {"tiny-llama3", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-phi3"}) {
    cases.push_back({model, v1::INT8, v1::RTN, 0.05});
    cases.push_back({model, v1::INT4_CLIP, v1::RTN, 0.7});
    cases.push_back({model, v1::INT4_CLIP, v1::AWQ, 0.7});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(TinyCheckpoints, QuantizedFamilyTest, testing::ValuesIn(Cases()),
                         CaseName);

}  // namespace
}  // namespace wq

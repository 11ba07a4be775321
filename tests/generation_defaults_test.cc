// generation_config.json's sampling defaults: read as transformers reads
// them (hf_config), and applied by the service to the fields a request leaves
// unset, explicit values winning (inference_service).
#include <string>
#include <utility>
#include <vector>

#include "common/model/hf_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "inference_service/inference_service.h"

namespace wq {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<GenerationDefaults> DefaultsOf(const std::string& generation_config) {
  LlamaConfig config;
  config.vocab_size = 512;
  absl::Status merged = MergeGenerationConfig(generation_config, &config);
  if (!merged.ok()) return merged;
  return config.generation_defaults;
}

TEST(GenerationDefaults, SamplingFieldsApplyWhenDoSampleIsTrue) {
  auto defaults = DefaultsOf(R"({"do_sample": true, "temperature": 0.6, "top_p": 0.9,
                                 "top_k": 20, "repetition_penalty": 1.05, "eos_token_id": 2})");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->temperature, 0.6f);
  EXPECT_EQ(defaults->top_p, 0.9f);
  EXPECT_EQ(defaults->top_k, 20);
  EXPECT_EQ(defaults->repetition_penalty, 1.05f);

  // transformers' temperature when do_sample gives none.
  defaults = DefaultsOf(R"({"do_sample": true})");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->temperature, 1.0f);
  EXPECT_FALSE(defaults->top_p.has_value());
  EXPECT_FALSE(defaults->top_k.has_value());
}

TEST(GenerationDefaults, DoSampleFalseIsGreedyAndAbsentSetsNothing) {
  // transformers decodes greedily and ignores the sampling fields; the
  // repetition penalty applies to greedy decoding too.
  auto defaults = DefaultsOf(
      R"({"do_sample": false, "temperature": 0.6, "top_k": 5, "repetition_penalty": 1.2})");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->temperature, 0.0f);
  EXPECT_FALSE(defaults->top_k.has_value());
  EXPECT_EQ(defaults->repetition_penalty, 1.2f);

  defaults = DefaultsOf(R"({"eos_token_id": [2, 3]})");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_FALSE(defaults->temperature.has_value());
  EXPECT_FALSE(defaults->top_p.has_value());
  EXPECT_FALSE(defaults->top_k.has_value());
  EXPECT_FALSE(defaults->repetition_penalty.has_value());
}

TEST(GenerationDefaults, OutOfRangeValuesAreRefusedByName) {
  for (const auto& [json, field] : std::vector<std::pair<std::string, std::string>>{
           {R"({"do_sample": "yes"})", "do_sample"},
           {R"({"do_sample": true, "temperature": 0})", "temperature"},
           {R"({"do_sample": true, "temperature": -1})", "temperature"},
           {R"({"do_sample": true, "top_p": 1.5})", "top_p"},
           {R"({"do_sample": true, "top_k": -1})", "top_k"},
           {R"({"repetition_penalty": 0})", "repetition_penalty"},
       }) {
    auto defaults = DefaultsOf(json);
    ASSERT_FALSE(defaults.ok()) << json;
    EXPECT_EQ(defaults.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(defaults.status().message()), HasSubstr(field)) << json;
  }
}

TEST(GenerationDefaults, FillOnlyWhatTheRequestLeavesUnset) {
  GenerationDefaults defaults;
  defaults.temperature = 0.7f;
  defaults.top_k = 20;
  defaults.top_p = 0.8f;
  defaults.repetition_penalty = 1.05f;

  v1::SamplingParams unset;
  unset.set_seed(1);
  auto params = ToGenerationParams(WithGenerationDefaults(unset, defaults), InferenceLimits());
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->sampling.temperature, 0.7f);
  EXPECT_EQ(params->sampling.top_k, 20);
  EXPECT_EQ(params->sampling.top_p, 0.8f);
  EXPECT_EQ(params->sampling.repetition_penalty, 1.05f);

  // Explicit values win, including the zeros that mean greedy and no limit.
  v1::SamplingParams explicit_values = unset;
  explicit_values.set_temperature(0);
  explicit_values.set_top_k(0);
  explicit_values.set_top_p(1);
  explicit_values.set_repetition_penalty(1);
  params = ToGenerationParams(WithGenerationDefaults(explicit_values, defaults),
                              InferenceLimits());
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->sampling.temperature, 0.0f);
  EXPECT_EQ(params->sampling.top_k, 0);
  EXPECT_EQ(params->sampling.top_p, 1.0f);
  EXPECT_EQ(params->sampling.repetition_penalty, 1.0f);

  // No defaults: the request's own unset values, greedy.
  params = ToGenerationParams(WithGenerationDefaults(unset, GenerationDefaults()),
                              InferenceLimits());
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->sampling.temperature, 0.0f);
  EXPECT_EQ(params->sampling.top_k, 0);
  EXPECT_EQ(params->sampling.top_p, 1.0f);
}

}  // namespace
}  // namespace wq

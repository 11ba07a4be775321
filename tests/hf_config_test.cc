#include "common/model/hf_config.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

using ::testing::HasSubstr;

constexpr char kStoriesConfig[] = "testdata/models/stories260K/config.json";

// A minimal valid config; tests override single fields.
nlohmann::json MinimalConfig() {
  return {
      {"architectures", {"LlamaForCausalLM"}},
      {"hidden_size", 64},
      {"intermediate_size", 172},
      {"num_hidden_layers", 2},
      {"num_attention_heads", 8},
      {"vocab_size", 512},
  };
}

absl::StatusOr<LlamaConfig> ParseWith(const std::string& key,
                                      const nlohmann::json& value) {
  nlohmann::json config = MinimalConfig();
  config[key] = value;
  return ParseLlamaConfig(config.dump());
}

absl::StatusOr<LlamaConfig> ParseWithout(const std::string& key) {
  nlohmann::json config = MinimalConfig();
  config.erase(key);
  return ParseLlamaConfig(config.dump());
}

void ExpectError(const absl::StatusOr<LlamaConfig>& result,
                 absl::StatusCode code, const std::string& message) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), code) << result.status();
  EXPECT_THAT(std::string(result.status().message()), HasSubstr(message));
}

TEST(HfConfigTest, LoadsBundledStoriesConfig) {
  auto config = LoadLlamaConfig(kStoriesConfig);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->intermediate_size, 172);
  EXPECT_EQ(config->num_hidden_layers, 5);
  EXPECT_EQ(config->num_attention_heads, 8);
  EXPECT_EQ(config->num_key_value_heads, 4);
  EXPECT_EQ(config->head_dim, 8);
  EXPECT_EQ(config->vocab_size, 512);
  EXPECT_EQ(config->max_position_embeddings, 512);
  EXPECT_FLOAT_EQ(config->rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(config->rope_theta, 10000.0f);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_EQ(config->eos_token_id, 2);
  EXPECT_EQ(config->torch_dtype, "float32");
}

TEST(HfConfigTest, Defaults) {
  auto config = ParseLlamaConfig(MinimalConfig().dump());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_key_value_heads, 8);
  EXPECT_EQ(config->head_dim, 8);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_FLOAT_EQ(config->rms_norm_eps, 1e-6f);
  EXPECT_FLOAT_EQ(config->rope_theta, 10000.0f);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_EQ(config->eos_token_id, 2);
  EXPECT_EQ(config->torch_dtype, "");
}

TEST(HfConfigTest, ModelTypeAloneIdentifiesLlama) {
  nlohmann::json config = MinimalConfig();
  config.erase("architectures");
  config["model_type"] = "llama";
  EXPECT_TRUE(ParseLlamaConfig(config.dump()).ok());
}

TEST(HfConfigTest, NullsMeanDefaults) {
  auto config = ParseWith("num_key_value_heads", nullptr);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_key_value_heads, 8);
  EXPECT_TRUE(ParseWith("rope_scaling", nullptr).ok());
  EXPECT_TRUE(ParseWith("torch_dtype", nullptr).ok());
}

// Found by fuzz/hf_config_fuzz: 1e-84 is a positive double but a float 0,
// which made an rms_norm_eps of 0 that the config's own JSON then refused.
TEST(HfConfigTest, PositiveFieldsThatUnderflowFloatAreRefused) {
  ExpectError(ParseWith("rms_norm_eps", 1e-84), absl::StatusCode::kInvalidArgument,
              "rms_norm_eps' is 1e-84; it must be a positive float32");
  ExpectError(ParseWith("rope_theta", 1e-60), absl::StatusCode::kInvalidArgument,
              "rope_theta' is 1e-60; it must be a positive float32");
  auto tiny = ParseWith("rms_norm_eps", 1e-40);  // a float subnormal, still > 0
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_GT(tiny->rms_norm_eps, 0.0f);
  auto reparsed = ParseLlamaConfig(LlamaConfigToJson(*tiny));
  ASSERT_TRUE(reparsed.ok()) << reparsed.status();
  EXPECT_EQ(reparsed->rms_norm_eps, tiny->rms_norm_eps);
}

TEST(HfConfigTest, ExplicitHeadDimNeedNotDivideHidden) {
  nlohmann::json config = MinimalConfig();
  config["num_attention_heads"] = 3;
  config["head_dim"] = 32;
  auto parsed = ParseLlamaConfig(config.dump());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->head_dim, 32);
}

TEST(HfConfigTest, EosTokenListKeepsEveryId) {
  auto config = ParseWith("eos_token_id", {128001, 128009});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->eos_token_id, 128001);
  EXPECT_EQ(config->eos_token_ids, (std::vector<int>{128001, 128009}));
  ExpectError(ParseWith("eos_token_id", nlohmann::json::array()),
              absl::StatusCode::kInvalidArgument, "empty list");
}

TEST(HfConfigTest, IntegralFloatsAccepted) {
  auto config = ParseWith("hidden_size", 64.0);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, 64);
  ExpectError(ParseWith("hidden_size", 64.5),
              absl::StatusCode::kInvalidArgument, "must be an integer");
}

TEST(HfConfigTest, RejectsUnknownArchitectureListingTheSupportedOnes) {
  nlohmann::json config = MinimalConfig();
  config["architectures"] = {"GemmaForCausalLM"};
  config["model_type"] = "gemma";
  ExpectError(ParseLlamaConfig(config.dump()), absl::StatusCode::kUnimplemented,
              "supported architectures: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
              "Qwen3ForCausalLM, Phi3ForCausalLM");
  config.erase("architectures");
  config.erase("model_type");
  ExpectError(ParseLlamaConfig(config.dump()), absl::StatusCode::kUnimplemented,
              "neither 'architectures' nor 'model_type'");
}

TEST(HfConfigTest, ModelTypeAloneIdentifiesEachFamily) {
  for (const ArchitectureSpec& spec : kArchitectures) {
    nlohmann::json config = MinimalConfig();
    config.erase("architectures");
    config["model_type"] = std::string(spec.model_type);
    auto parsed = ParseLlamaConfig(config.dump());
    ASSERT_TRUE(parsed.ok()) << spec.model_type << ": " << parsed.status();
    EXPECT_EQ(parsed->architecture, spec.id);
  }
}

TEST(HfConfigTest, ReadsRopeScalingVariants) {
  auto linear = ParseWith("rope_scaling", {{"type", "linear"}, {"factor", 2.0}});
  ASSERT_TRUE(linear.ok()) << linear.status();
  EXPECT_EQ(linear->rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_EQ(linear->rope_scaling.factor, 2.0);
  auto llama3 = ParseWith("rope_scaling", {{"rope_type", "llama3"},
                                           {"factor", 32.0},
                                           {"low_freq_factor", 1.0},
                                           {"high_freq_factor", 4.0},
                                           {"original_max_position_embeddings", 8192}});
  ASSERT_TRUE(llama3.ok()) << llama3.status();
  EXPECT_EQ(llama3->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(llama3->rope_scaling.original_max_position_embeddings, 8192);
  auto dynamic = ParseWith("rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}});
  ASSERT_TRUE(dynamic.ok()) << dynamic.status();
  EXPECT_EQ(dynamic->rope_scaling.type, RopeScaling::Type::kDynamic);
}

TEST(HfConfigTest, RefusesWhatItDoesNotImplement) {
  ExpectError(ParseWith("rope_scaling", {{"type", "yarn"}, {"factor", 4.0}}),
              absl::StatusCode::kUnimplemented, "supported: linear, dynamic, llama3");
  ExpectError(ParseWith("rope_scaling", {{"type", "linear"}}),
              absl::StatusCode::kInvalidArgument, "needs a 'factor'");
  ExpectError(ParseWith("hidden_act", "gelu"), absl::StatusCode::kUnimplemented, "silu");
  ExpectError(ParseWith("partial_rotary_factor", 0.5), absl::StatusCode::kUnimplemented,
              "whole heads");
  ExpectError(ParseWith("sliding_window", 4096), absl::StatusCode::kUnimplemented,
              "no sliding-window attention");
  nlohmann::json mistral = MinimalConfig();
  mistral["architectures"] = {"MistralForCausalLM"};
  mistral["attention_bias"] = true;
  ExpectError(ParseLlamaConfig(mistral.dump()), absl::StatusCode::kUnimplemented,
              "MistralForCausalLM has no such biases");
  nlohmann::json qwen2 = MinimalConfig();
  qwen2["architectures"] = {"Qwen2ForCausalLM"};
  qwen2["sliding_window"] = 4096;
  qwen2["use_sliding_window"] = true;
  ExpectError(ParseLlamaConfig(qwen2.dump()), absl::StatusCode::kUnimplemented,
              "use_sliding_window");
  qwen2["use_sliding_window"] = false;  // the window is then ignored, as transformers does
  auto full = ParseLlamaConfig(qwen2.dump());
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->sliding_window, 0);
}

TEST(HfConfigTest, LlamaBiasFieldsAreRead) {
  auto config = ParseWith("attention_bias", true);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->attention_bias);
}

TEST(HfConfigTest, EveryTinyCheckpointConfigRoundTrips) {
  for (const char* name :
       {"tiny-llama3", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-phi3"}) {
    auto original = LoadLlamaConfig(absl::StrCat("../shared/models/", name, "/config.json"));
    ASSERT_TRUE(original.ok()) << name << ": " << original.status();
    const std::string text = LlamaConfigToJson(*original);
    auto parsed = ParseLlamaConfig(text);
    ASSERT_TRUE(parsed.ok()) << name << ": " << parsed.status() << "\n" << text;
    EXPECT_EQ(parsed->architecture, original->architecture) << name;
    EXPECT_EQ(parsed->sliding_window, original->sliding_window) << name;
    EXPECT_EQ(parsed->rope_scaling.type, original->rope_scaling.type) << name;
    EXPECT_EQ(parsed->rope_scaling.factor, original->rope_scaling.factor) << name;
    EXPECT_EQ(parsed->head_dim, original->head_dim) << name;
    EXPECT_EQ(LlamaConfigToJson(*parsed), text) << name;
  }
}

TEST(HfConfigTest, RejectsMalformedJson) {
  ExpectError(ParseLlamaConfig("{"), absl::StatusCode::kInvalidArgument,
              "not valid JSON");
  ExpectError(ParseLlamaConfig("[]"), absl::StatusCode::kInvalidArgument,
              "must be a JSON object");
  ExpectError(ParseLlamaConfig(""), absl::StatusCode::kInvalidArgument,
              "not valid JSON");
}

TEST(HfConfigTest, RejectsMissingRequiredFields) {
  for (const char* key :
       {"hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "vocab_size"}) {
    ExpectError(ParseWithout(key), absl::StatusCode::kInvalidArgument,
                std::string("missing required field '") + key + "'");
  }
}

TEST(HfConfigTest, RejectsOutOfRangeSizes) {
  for (const char* key :
       {"hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
        "max_position_embeddings"}) {
    SCOPED_TRACE(key);
    ExpectError(ParseWith(key, 0), absl::StatusCode::kInvalidArgument, key);
    ExpectError(ParseWith(key, -4), absl::StatusCode::kInvalidArgument, key);
    ExpectError(ParseWith(key, 1 << 20), absl::StatusCode::kInvalidArgument,
                key);
    ExpectError(ParseWith(key, uint64_t{1} << 63),
                absl::StatusCode::kInvalidArgument, key);
    ExpectError(ParseWith(key, "64"), absl::StatusCode::kInvalidArgument,
                "must be an integer");
  }
}

TEST(HfConfigTest, RejectsInconsistentShapes) {
  ExpectError(ParseWith("num_attention_heads", 7),
              absl::StatusCode::kInvalidArgument, "not divisible");
  ExpectError(ParseWith("num_key_value_heads", 3),
              absl::StatusCode::kInvalidArgument, "not a multiple");
  ExpectError(ParseWith("num_key_value_heads", 16),
              absl::StatusCode::kInvalidArgument, "not a multiple");
  ExpectError(ParseWith("head_dim", 7), absl::StatusCode::kInvalidArgument,
              "must be even");
  nlohmann::json config = MinimalConfig();
  config["num_attention_heads"] = 64;
  config["hidden_size"] = 64 * 3;  // head_dim 3 by default: odd.
  ExpectError(ParseLlamaConfig(config.dump()),
              absl::StatusCode::kInvalidArgument, "must be even");
  config = MinimalConfig();
  config["num_attention_heads"] = 1024;
  config["head_dim"] = 1024;
  ExpectError(ParseLlamaConfig(config.dump()),
              absl::StatusCode::kInvalidArgument, "too large");
}

TEST(HfConfigTest, RejectsBadFloatsAndTypes) {
  ExpectError(ParseWith("rms_norm_eps", 0.0),
              absl::StatusCode::kInvalidArgument, "rms_norm_eps");
  ExpectError(ParseWith("rms_norm_eps", -1e-5),
              absl::StatusCode::kInvalidArgument, "rms_norm_eps");
  ExpectError(ParseWith("rope_theta", "big"),
              absl::StatusCode::kInvalidArgument, "must be a number");
  ExpectError(ParseWith("rope_theta", 1e300),
              absl::StatusCode::kInvalidArgument, "rope_theta");
  ExpectError(ParseWith("tie_word_embeddings", 1),
              absl::StatusCode::kInvalidArgument, "true or false");
  ExpectError(ParseWith("torch_dtype", 32), absl::StatusCode::kInvalidArgument,
              "torch_dtype");
  ExpectError(ParseWith("bos_token_id", -1), absl::StatusCode::kInvalidArgument,
              "bos_token_id");
}

TEST(HfConfigTest, JsonRoundTrip) {
  auto original = LoadLlamaConfig(kStoriesConfig);
  ASSERT_TRUE(original.ok()) << original.status();
  const std::string text = LlamaConfigToJson(*original);
  EXPECT_THAT(text, HasSubstr("\"LlamaForCausalLM\""));
  EXPECT_THAT(text, HasSubstr("\"model_type\": \"llama\""));
  EXPECT_THAT(text, HasSubstr("\"rms_norm_eps\": 1e-05"));
  EXPECT_THAT(text, HasSubstr("\"rope_theta\": 10000.0"));
  auto parsed = ParseLlamaConfig(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->hidden_size, original->hidden_size);
  EXPECT_EQ(parsed->intermediate_size, original->intermediate_size);
  EXPECT_EQ(parsed->num_hidden_layers, original->num_hidden_layers);
  EXPECT_EQ(parsed->num_attention_heads, original->num_attention_heads);
  EXPECT_EQ(parsed->num_key_value_heads, original->num_key_value_heads);
  EXPECT_EQ(parsed->head_dim, original->head_dim);
  EXPECT_EQ(parsed->vocab_size, original->vocab_size);
  EXPECT_EQ(parsed->max_position_embeddings, original->max_position_embeddings);
  EXPECT_EQ(parsed->rms_norm_eps, original->rms_norm_eps);
  EXPECT_EQ(parsed->rope_theta, original->rope_theta);
  EXPECT_EQ(parsed->tie_word_embeddings, original->tie_word_embeddings);
  EXPECT_EQ(parsed->bos_token_id, original->bos_token_id);
  EXPECT_EQ(parsed->eos_token_id, original->eos_token_id);
  EXPECT_EQ(parsed->torch_dtype, original->torch_dtype);
  // A second trip is textually stable.
  EXPECT_EQ(LlamaConfigToJson(*parsed), text);
}

TEST(HfConfigTest, LoadErrorsNameTheFile) {
  auto missing = LoadLlamaConfig(testing::TempDir() + "/no_config.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  const std::string path = testing::TempDir() + "/bad_config.json";
  ASSERT_TRUE(WriteFileDurably(path, "{\"model_type\": \"gpt2\"}").ok());
  auto bad = LoadLlamaConfig(path);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr(path));
}

}  // namespace
}  // namespace wq

#include "common/hf_config.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

using Json = nlohmann::json;

// Reads an optional integer field in [min_value, kMaxLlamaConfigDim). Absent
// or null leaves `out` unchanged.
absl::Status ReadInt(const Json& root, const char* key, int min_value, int* out,
                     bool* present = nullptr) {
  if (present != nullptr) *present = false;
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  // HF writes integers, but some exporters write 64.0; accept integral floats.
  int64_t value;
  if (it->is_number_integer()) {
    if (it->is_number_unsigned() &&
        it->get<uint64_t>() > static_cast<uint64_t>(kMaxLlamaConfigDim)) {
      value = kMaxLlamaConfigDim;
    } else {
      value = it->get<int64_t>();
    }
  } else if (it->is_number_float() && std::isfinite(it->get<double>()) &&
             std::trunc(it->get<double>()) == it->get<double>() &&
             std::fabs(it->get<double>()) < kMaxLlamaConfigDim * 2.0) {
    value = static_cast<int64_t>(it->get<double>());
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field '", key, "' must be an integer, got ", it->dump()));
  }
  if (value < min_value || value >= kMaxLlamaConfigDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field '", key, "' is ", value, "; it must be in [",
                     min_value, ", ", kMaxLlamaConfigDim, ")"));
  }
  *out = static_cast<int>(value);
  if (present != nullptr) *present = true;
  return absl::OkStatus();
}

absl::Status RequireInt(const Json& root, const char* key, int* out) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config is missing required field '", key, "'"));
  }
  return ReadInt(root, key, 1, out);
}

// Reads an optional positive finite float field.
absl::Status ReadPositiveFloat(const Json& root, const char* key, float* out) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field '", key, "' must be a number, got ", it->dump()));
  }
  const double value = it->get<double>();
  if (!std::isfinite(value) || value <= 0 ||
      value > std::numeric_limits<float>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field '", key, "' is ", value, "; it must be positive"));
  }
  *out = static_cast<float>(value);
  return absl::OkStatus();
}

absl::Status CheckArchitecture(const Json& root) {
  bool is_llama = false;
  auto model_type = root.find("model_type");
  if (model_type != root.end() && model_type->is_string() &&
      model_type->get<std::string>() == "llama") {
    is_llama = true;
  }
  auto architectures = root.find("architectures");
  if (architectures != root.end() && architectures->is_array()) {
    for (const Json& name : *architectures) {
      if (name.is_string() && name.get<std::string>() == "LlamaForCausalLM") {
        is_llama = true;
      }
    }
  }
  if (!is_llama) {
    std::string found =
        model_type != root.end() ? model_type->dump() : "no model_type";
    return absl::UnimplementedError(absl::StrCat(
        "only Llama models are supported (model_type \"llama\" or "
        "architectures containing \"LlamaForCausalLM\"); config has ",
        found));
  }
  return absl::OkStatus();
}

// The double nearest the shortest decimal that reads back as `value`, so that
// 1e-5f is written as 1e-05 rather than 9.999999747378752e-06.
double ShortestDecimal(float value) {
  char buffer[32];
  for (int precision = 1; precision <= 9; ++precision) {
    std::snprintf(buffer, sizeof(buffer), "%.*g", precision, value);
    if (std::strtof(buffer, nullptr) == value) break;
  }
  return std::strtod(buffer, nullptr);
}

}  // namespace

absl::StatusOr<LlamaConfig> ParseLlamaConfig(std::string_view json) {
  Json root = Json::parse(json.begin(), json.end(), nullptr,
                          /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError("config is not valid JSON");
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config must be a JSON object, got ", root.type_name()));
  }
  RETURN_IF_ERROR(CheckArchitecture(root));

  auto rope_scaling = root.find("rope_scaling");
  if (rope_scaling != root.end() && !rope_scaling->is_null()) {
    return absl::UnimplementedError(absl::StrCat(
        "rope_scaling is not supported (config has ", rope_scaling->dump(),
        "); only plain RoPE models can be served"));
  }

  LlamaConfig config;
  RETURN_IF_ERROR(RequireInt(root, "hidden_size", &config.hidden_size));
  RETURN_IF_ERROR(
      RequireInt(root, "intermediate_size", &config.intermediate_size));
  RETURN_IF_ERROR(
      RequireInt(root, "num_hidden_layers", &config.num_hidden_layers));
  RETURN_IF_ERROR(
      RequireInt(root, "num_attention_heads", &config.num_attention_heads));
  RETURN_IF_ERROR(RequireInt(root, "vocab_size", &config.vocab_size));
  config.num_key_value_heads = config.num_attention_heads;
  RETURN_IF_ERROR(
      ReadInt(root, "num_key_value_heads", 1, &config.num_key_value_heads));
  bool head_dim_given = false;
  RETURN_IF_ERROR(
      ReadInt(root, "head_dim", 1, &config.head_dim, &head_dim_given));
  RETURN_IF_ERROR(ReadInt(root, "max_position_embeddings", 1,
                          &config.max_position_embeddings));
  RETURN_IF_ERROR(ReadInt(root, "bos_token_id", 0, &config.bos_token_id));
  // Newer configs list several end tokens; the first is the primary one.
  auto eos = root.find("eos_token_id");
  if (eos != root.end() && eos->is_array()) {
    if (eos->empty()) {
      return absl::InvalidArgumentError(
          "config field 'eos_token_id' is an empty list; give at least one id");
    }
    Json first = Json::object({{"eos_token_id", (*eos)[0]}});
    RETURN_IF_ERROR(ReadInt(first, "eos_token_id", 0, &config.eos_token_id));
  } else {
    RETURN_IF_ERROR(ReadInt(root, "eos_token_id", 0, &config.eos_token_id));
  }
  RETURN_IF_ERROR(
      ReadPositiveFloat(root, "rms_norm_eps", &config.rms_norm_eps));
  RETURN_IF_ERROR(ReadPositiveFloat(root, "rope_theta", &config.rope_theta));

  auto tie = root.find("tie_word_embeddings");
  if (tie != root.end() && !tie->is_null()) {
    if (!tie->is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config field 'tie_word_embeddings' must be true or false, got ",
          tie->dump()));
    }
    config.tie_word_embeddings = tie->get<bool>();
  }
  auto torch_dtype = root.find("torch_dtype");
  if (torch_dtype != root.end() && !torch_dtype->is_null()) {
    if (!torch_dtype->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config field 'torch_dtype' must be a string, got ",
                       torch_dtype->dump()));
    }
    config.torch_dtype = torch_dtype->get<std::string>();
  }

  if (!head_dim_given) {
    if (config.hidden_size % config.num_attention_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "hidden_size ", config.hidden_size,
          " is not divisible by num_attention_heads ",
          config.num_attention_heads, "; set head_dim explicitly"));
    }
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_attention_heads ", config.num_attention_heads,
                     " is not a multiple of num_key_value_heads ",
                     config.num_key_value_heads));
  }
  // RoPE rotates pairs of dimensions.
  if (config.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim ", config.head_dim, " must be even for rotary embeddings"));
  }
  if (static_cast<int64_t>(config.num_attention_heads) * config.head_dim >=
      kMaxLlamaConfigDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_attention_heads * head_dim = ",
        static_cast<int64_t>(config.num_attention_heads) * config.head_dim,
        " is too large"));
  }
  return config;
}

absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  absl::StatusOr<LlamaConfig> config = ParseLlamaConfig(text);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

std::string LlamaConfigToJson(const LlamaConfig& config) {
  nlohmann::ordered_json json;
  json["architectures"] = {"LlamaForCausalLM"};
  json["model_type"] = "llama";
  json["hidden_size"] = config.hidden_size;
  json["intermediate_size"] = config.intermediate_size;
  json["num_hidden_layers"] = config.num_hidden_layers;
  json["num_attention_heads"] = config.num_attention_heads;
  json["num_key_value_heads"] = config.num_key_value_heads;
  json["head_dim"] = config.head_dim;
  json["vocab_size"] = config.vocab_size;
  json["max_position_embeddings"] = config.max_position_embeddings;
  json["rms_norm_eps"] = ShortestDecimal(config.rms_norm_eps);
  json["rope_theta"] = ShortestDecimal(config.rope_theta);
  json["rope_scaling"] = nullptr;
  json["hidden_act"] = "silu";
  json["tie_word_embeddings"] = config.tie_word_embeddings;
  json["bos_token_id"] = config.bos_token_id;
  json["eos_token_id"] = config.eos_token_id;
  if (!config.torch_dtype.empty()) json["torch_dtype"] = config.torch_dtype;
  // Replace rather than throw on non-UTF-8 torch_dtype: this function cannot
  // fail, and a parsed config only ever holds valid UTF-8.
  return json.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) +
         "\n";
}

}  // namespace wq

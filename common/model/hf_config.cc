#include "common/model/hf_config.h"

#include <algorithm>
#include <filesystem>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/io/file_util.h"
#include "common/io/status_macros.h"
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
  // Checked after the conversion too: a tiny positive double (1e-84) would
  // become a float 0, e.g. an rms_norm_eps of 0 (found by fuzz/hf_config_fuzz).
  if (!std::isfinite(value) || value <= 0 ||
      value > std::numeric_limits<float>::max() || static_cast<float>(value) <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field '", key, "' is ", value, "; it must be a positive float32"));
  }
  *out = static_cast<float>(value);
  return absl::OkStatus();
}

absl::StatusOr<Architecture> ReadArchitecture(const Json& root) {
  auto architectures = root.find("architectures");
  if (architectures != root.end() && architectures->is_array()) {
    for (const Json& name : *architectures) {
      for (const ArchitectureSpec& spec : kArchitectures) {
        if (name.is_string() && name.get<std::string>() == spec.hf_class) return spec.id;
      }
    }
  }
  auto model_type = root.find("model_type");
  if (model_type != root.end() && model_type->is_string()) {
    for (const ArchitectureSpec& spec : kArchitectures) {
      if (model_type->get<std::string>() == spec.model_type) return spec.id;
    }
  }
  std::vector<absl::string_view> supported;
  for (const ArchitectureSpec& spec : kArchitectures) supported.push_back(spec.hf_class);
  const std::string found =
      architectures != root.end() ? architectures->dump()
      : model_type != root.end()  ? model_type->dump()
                                  : std::string("neither 'architectures' nor 'model_type'");
  return absl::UnimplementedError(absl::StrCat("config has ", found,
                                               "; supported architectures: ",
                                               absl::StrJoin(supported, ", ")));
}

absl::Status ReadBool(const Json& root, const char* key, bool* out) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field '", key, "' must be true or false, got ", it->dump()));
  }
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status ReadString(const Json& root, const char* key, std::string* out) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field '", key, "' must be a string, got ", it->dump()));
  }
  *out = it->get<std::string>();
  return absl::OkStatus();
}

// rope_scaling (transformers 4.x) or rope_parameters (5.x, which also
// carries rope_theta). "type" is the older spelling of "rope_type".
absl::Status ReadRope(const Json& root, LlamaConfig* config) {
  const char* key = "rope_scaling";
  auto it = root.find(key);
  auto params = root.find("rope_parameters");
  if (params != root.end() && !params->is_null()) {
    key = "rope_parameters";
    it = params;
  }
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field '", key, "' must be an object, got ", it->dump()));
  }
  RETURN_IF_ERROR(ReadPositiveFloat(*it, "rope_theta", &config->rope_theta));
  std::string type = "default";
  RETURN_IF_ERROR(ReadString(*it, "type", &type));
  RETURN_IF_ERROR(ReadString(*it, "rope_type", &type));
  RopeScaling& r = config->rope_scaling;
  if (type == "default") {
    r.type = RopeScaling::Type::kNone;
    return absl::OkStatus();
  }
  if (type == "linear") {
    r.type = RopeScaling::Type::kLinear;
  } else if (type == "dynamic") {
    r.type = RopeScaling::Type::kDynamic;
  } else if (type == "llama3") {
    r.type = RopeScaling::Type::kLlama3;
  } else {
    return absl::UnimplementedError(absl::StrCat(
        "config field '", key, "' has type \"", type,
        "\", which wq does not implement (supported: linear, dynamic, llama3)"));
  }
  auto factor = it->find("factor");
  if (factor == it->end() || factor->is_null()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field '", key, "' of type ", type, " needs a 'factor'"));
  }
  RETURN_IF_ERROR(ReadPositiveFloat(*it, "factor", &r.factor));
  RETURN_IF_ERROR(ReadPositiveFloat(*it, "low_freq_factor", &r.low_freq_factor));
  RETURN_IF_ERROR(ReadPositiveFloat(*it, "high_freq_factor", &r.high_freq_factor));
  r.original_max_position_embeddings = config->max_position_embeddings;
  RETURN_IF_ERROR(ReadInt(*it, "original_max_position_embeddings", 1,
                          &r.original_max_position_embeddings));
  if (r.type == RopeScaling::Type::kLlama3 && !(r.high_freq_factor > r.low_freq_factor)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field '", key, "': high_freq_factor must exceed low_freq_factor"));
  }
  return absl::OkStatus();
}

// sliding_window as the family's rule reads it; null or absent: none.
absl::Status ReadSlidingWindow(const Json& root, LlamaConfig* config) {
  const SlidingWindowRule rule = config->spec().sliding_window;
  auto window = root.find("sliding_window");
  const bool window_set = window != root.end() && !window->is_null();
  bool enabled = window_set;
  if (rule == SlidingWindowRule::kUseSlidingWindow) {
    enabled = false;
    RETURN_IF_ERROR(ReadBool(root, "use_sliding_window", &enabled));
    if (enabled) {
      // Qwen2's window applies only to layers from max_window_layers on.
      return absl::UnimplementedError(absl::StrCat(
          "config field 'use_sliding_window' is true; wq implements ", config->spec().hf_class,
          " with full attention only"));
    }
    return absl::OkStatus();
  }
  if (!enabled) return absl::OkStatus();
  if (rule == SlidingWindowRule::kNone) {
    return absl::UnimplementedError(absl::StrCat("config field 'sliding_window' is set, but ",
                                                 config->spec().hf_class,
                                                 " has no sliding-window attention"));
  }
  return ReadInt(root, "sliding_window", 1, &config->sliding_window);
}

// A config field the family does not have may only hold its neutral value.
absl::Status RefuseBias(const Json& root, const char* key, const ArchitectureSpec& spec) {
  bool value = false;
  RETURN_IF_ERROR(ReadBool(root, key, &value));
  if (value) {
    return absl::UnimplementedError(absl::StrCat("config field '", key, "' is true, but ",
                                                 spec.hf_class, " has no such biases"));
  }
  return absl::OkStatus();
}

absl::Status ReadEosTokenIds(const Json& root, LlamaConfig* config) {
  auto eos = root.find("eos_token_id");
  if (eos == root.end() || eos->is_null()) return absl::OkStatus();
  std::vector<int> ids;
  const Json list = eos->is_array() ? *eos : Json::array({*eos});
  if (list.empty()) {
    return absl::InvalidArgumentError(
        "config field 'eos_token_id' is an empty list; give at least one id");
  }
  for (const Json& id : list) {
    int value = 0;
    RETURN_IF_ERROR(ReadInt(Json::object({{"eos_token_id", id}}), "eos_token_id", 0, &value));
    ids.push_back(value);
  }
  config->eos_token_ids = ids;
  config->eos_token_id = ids.front();
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
  LlamaConfig config;
  ASSIGN_OR_RETURN(config.architecture, ReadArchitecture(root));
  const ArchitectureSpec& spec = config.spec();
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
  RETURN_IF_ERROR(ReadEosTokenIds(root, &config));
  RETURN_IF_ERROR(
      ReadPositiveFloat(root, "rms_norm_eps", &config.rms_norm_eps));
  RETURN_IF_ERROR(ReadPositiveFloat(root, "rope_theta", &config.rope_theta));
  RETURN_IF_ERROR(ReadRope(root, &config));
  RETURN_IF_ERROR(ReadBool(root, "tie_word_embeddings", &config.tie_word_embeddings));
  // transformers 5.x writes "dtype"; 4.x "torch_dtype".
  RETURN_IF_ERROR(ReadString(root, "torch_dtype", &config.torch_dtype));
  RETURN_IF_ERROR(ReadString(root, "dtype", &config.torch_dtype));

  std::string hidden_act = "silu";
  RETURN_IF_ERROR(ReadString(root, "hidden_act", &hidden_act));
  if (hidden_act != "silu") {
    return absl::UnimplementedError(absl::StrCat(
        "config field 'hidden_act' is \"", hidden_act, "\"; wq implements \"silu\" only"));
  }
  if (spec.attention_bias_field) {
    RETURN_IF_ERROR(ReadBool(root, "attention_bias", &config.attention_bias));
  } else {
    RETURN_IF_ERROR(RefuseBias(root, "attention_bias", spec));
  }
  if (spec.mlp_bias_field) {
    RETURN_IF_ERROR(ReadBool(root, "mlp_bias", &config.mlp_bias));
  } else {
    RETURN_IF_ERROR(RefuseBias(root, "mlp_bias", spec));
  }
  RETURN_IF_ERROR(ReadSlidingWindow(root, &config));
  auto partial_rotary = root.find("partial_rotary_factor");
  if (partial_rotary != root.end() && !partial_rotary->is_null() &&
      !(partial_rotary->is_number() && partial_rotary->get<double>() == 1.0)) {
    return absl::UnimplementedError(absl::StrCat("config field 'partial_rotary_factor' is ",
                                                 partial_rotary->dump(),
                                                 "; wq rotates whole heads only (1.0)"));
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

absl::StatusOr<LlamaConfig> LoadLlamaConfig(const RootedPath& file) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(file));
  absl::StatusOr<LlamaConfig> config = ParseLlamaConfig(text);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(file.path, ": ", config.status().message()));
  }
  return config;
}

namespace {

// A positive float field that may be absent (or null): unset then.
absl::StatusOr<std::optional<float>> OptionalPositiveFloat(const Json& root, const char* key) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return std::nullopt;
  float value = 0;
  RETURN_IF_ERROR(ReadPositiveFloat(root, key, &value));
  return value;
}

absl::StatusOr<GenerationDefaults> ReadGenerationDefaults(const Json& root) {
  GenerationDefaults defaults;
  ASSIGN_OR_RETURN(defaults.repetition_penalty,
                   OptionalPositiveFloat(root, "repetition_penalty"));
  bool do_sample = false;
  auto do_sample_field = root.find("do_sample");
  if (do_sample_field == root.end() || do_sample_field->is_null()) return defaults;
  RETURN_IF_ERROR(ReadBool(root, "do_sample", &do_sample));
  if (!do_sample) {
    defaults.temperature = 0.0f;
    return defaults;
  }
  ASSIGN_OR_RETURN(defaults.temperature, OptionalPositiveFloat(root, "temperature"));
  if (!defaults.temperature.has_value()) defaults.temperature = 1.0f;  // transformers'
  ASSIGN_OR_RETURN(defaults.top_p, OptionalPositiveFloat(root, "top_p"));
  if (defaults.top_p.has_value() && *defaults.top_p > 1.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field 'top_p' is ", *defaults.top_p, "; it must be in (0, 1]"));
  }
  int top_k = 0;
  bool top_k_present = false;
  RETURN_IF_ERROR(ReadInt(root, "top_k", 0, &top_k, &top_k_present));
  if (top_k_present) defaults.top_k = top_k;
  return defaults;
}

}  // namespace

absl::Status MergeGenerationConfig(std::string_view json, LlamaConfig* config) {
  Json root = Json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("generation_config.json is not a JSON object");
  }
  LlamaConfig generation;
  generation.eos_token_ids.clear();
  RETURN_IF_ERROR(ReadEosTokenIds(root, &generation));
  ASSIGN_OR_RETURN(generation.generation_defaults, ReadGenerationDefaults(root));
  for (int id : generation.eos_token_ids) {
    if (id >= config->vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("generation_config.json eos_token_id ", id,
                                                     " is outside the vocabulary of ",
                                                     config->vocab_size));
    }
    if (std::find(config->eos_token_ids.begin(), config->eos_token_ids.end(), id) ==
        config->eos_token_ids.end()) {
      config->eos_token_ids.push_back(id);
    }
  }
  config->generation_defaults = generation.generation_defaults;
  return absl::OkStatus();
}

absl::StatusOr<LlamaConfig> LoadModelDirConfig(const RootedPath& dir) {
  ASSIGN_OR_RETURN(LlamaConfig config, LoadLlamaConfig(dir.Child("config.json")));
  absl::StatusOr<std::string> text = ReadFile(dir.Child("generation_config.json"));
  if (absl::IsNotFound(text.status())) return config;
  RETURN_IF_ERROR(text.status());
  absl::Status merged = MergeGenerationConfig(*text, &config);
  if (!merged.ok()) {
    return absl::Status(merged.code(), absl::StrCat(dir.path, "/generation_config.json: ",
                                                    merged.message()));
  }
  return config;
}

std::string LlamaConfigToJson(const LlamaConfig& config) {
  nlohmann::ordered_json json;
  const ArchitectureSpec& spec = config.spec();
  json["architectures"] = {std::string(spec.hf_class)};
  json["model_type"] = std::string(spec.model_type);
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
  const RopeScaling& rope = config.rope_scaling;
  if (rope.type == RopeScaling::Type::kNone) {
    json["rope_scaling"] = nullptr;
  } else {
    nlohmann::ordered_json& r = json["rope_scaling"];
    r["rope_type"] = rope.type == RopeScaling::Type::kLinear    ? "linear"
                     : rope.type == RopeScaling::Type::kDynamic ? "dynamic"
                                                                : "llama3";
    r["factor"] = ShortestDecimal(rope.factor);
    if (rope.type == RopeScaling::Type::kLlama3) {
      r["low_freq_factor"] = ShortestDecimal(rope.low_freq_factor);
      r["high_freq_factor"] = ShortestDecimal(rope.high_freq_factor);
    }
    r["original_max_position_embeddings"] = rope.original_max_position_embeddings;
  }
  json["hidden_act"] = "silu";
  if (spec.attention_bias_field) json["attention_bias"] = config.attention_bias;
  if (spec.mlp_bias_field) json["mlp_bias"] = config.mlp_bias;
  if (spec.sliding_window == SlidingWindowRule::kUseSlidingWindow) {
    json["use_sliding_window"] = false;
  } else if (spec.sliding_window == SlidingWindowRule::kWindowField) {
    json["sliding_window"] = config.sliding_window > 0 ? nlohmann::ordered_json(config.sliding_window)
                                                       : nlohmann::ordered_json(nullptr);
  }
  json["tie_word_embeddings"] = config.tie_word_embeddings;
  json["bos_token_id"] = config.bos_token_id;
  if (config.eos_token_ids.size() > 1) {
    json["eos_token_id"] = config.eos_token_ids;
  } else {
    json["eos_token_id"] = config.eos_token_id;
  }
  if (!config.torch_dtype.empty()) json["torch_dtype"] = config.torch_dtype;
  // Replace rather than throw on non-UTF-8 torch_dtype: this function cannot
  // fail, and a parsed config only ever holds valid UTF-8.
  return json.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) +
         "\n";
}

}  // namespace wq

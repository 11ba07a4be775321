// Hugging Face config.json of the decoder families in architecture.h: parsing
// with HF's defaults (transformers 4.x and 5.x field layouts), validation of
// everything the inference engine relies on, refusal of every field that
// would change the numerics and is not implemented, and serialisation back to
// HF-style JSON.
#ifndef WQ_COMMON_HF_CONFIG_H_
#define WQ_COMMON_HF_CONFIG_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/architecture.h"
#include "common/io/file_util.h"

namespace wq {

// transformers' rope_scaling / rope_parameters types that wq implements.
struct RopeScaling {
  enum class Type { kNone, kLinear, kDynamic, kLlama3 };
  Type type = Type::kNone;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;   // llama3
  float high_freq_factor = 4.0f;  // llama3
  // llama3 and dynamic: the context the model was trained at.
  int original_max_position_embeddings = 0;
};

// generation_config.json's sampling defaults: what a request that leaves the
// field unset gets. Unset here too: the serving API's own default.
struct GenerationDefaults {
  std::optional<float> temperature;  // 0 (greedy) when do_sample is false
  std::optional<int> top_k;          // 0: no limit
  std::optional<float> top_p;
  std::optional<float> repetition_penalty;
};

struct LlamaConfig {
  Architecture architecture = Architecture::kLlama;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // Defaults to num_attention_heads.
  int head_dim = 0;  // Defaults to hidden_size / num_attention_heads.
  int vocab_size = 0;
  int max_position_embeddings = 2048;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  bool tie_word_embeddings = false;
  int bos_token_id = 1;
  int eos_token_id = 2;
  // Every end token config.json lists (Llama 3 lists several); the first is
  // eos_token_id.
  std::vector<int> eos_token_ids = {2};
  std::string torch_dtype;  // E.g. "float32"; empty when absent.
  bool attention_bias = false;  // q/k/v/o_proj biases (where the family reads it)
  bool mlp_bias = false;        // gate/up/down_proj biases
  int sliding_window = 0;       // keys a query sees, itself included; 0: all
  RopeScaling rope_scaling;
  GenerationDefaults generation_defaults;  // from generation_config.json

  const ArchitectureSpec& spec() const { return SpecOf(architecture); }
};

// Every size must be below this; larger values are corrupt configs that would
// otherwise turn into enormous allocations.
inline constexpr int kMaxLlamaConfigDim = 1 << 20;

// INVALID_ARGUMENT for malformed JSON, wrong field types or inconsistent
// sizes; UNIMPLEMENTED, naming the field, for architectures, activations,
// rope_scaling types, sliding windows and biases wq does not implement.
absl::StatusOr<LlamaConfig> ParseLlamaConfig(std::string_view json);
// Reads (OpenForRead's rules) and parses a config.json; errors name the file.
absl::StatusOr<LlamaConfig> LoadLlamaConfig(const RootedPath& file);
// Adds the eos_token_id (an id or a list) of a generation_config.json to
// config->eos_token_ids: instruct models list their end-of-turn ids there
// (Llama 3: <|eot_id|>), and generation stops on any of them. Reads its
// sampling defaults into config->generation_defaults as transformers'
// generate() uses them: temperature, top_k and top_p only with
// `do_sample: true` (transformers ignores them otherwise), `do_sample: false`
// as a greedy default, repetition_penalty either way. INVALID_ARGUMENT naming
// the field for a value out of its range.
absl::Status MergeGenerationConfig(std::string_view json, LlamaConfig* config);
// config.json of a model or artifact directory, with its
// generation_config.json merged in when present.
absl::StatusOr<LlamaConfig> LoadModelDirConfig(const RootedPath& dir);
// HF-style config.json text (transformers 4.x layout) of the config's
// architecture; ParseLlamaConfig reads it back to an equal config.
std::string LlamaConfigToJson(const LlamaConfig& config);

}  // namespace wq

#endif  // WQ_COMMON_HF_CONFIG_H_

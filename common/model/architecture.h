// The decoder architectures wq implements, one table row each: what a family
// changes against Llama, as Hugging Face's config.json and safetensors name
// it. The config parser, the forward pass, the quantizer, calibration and the
// artifact reader all iterate this table (through model_description.h) rather
// than spelling out a family's tensors again.
//
// Adding a family: one row here, plus any genuinely new operation in
// llama.cc (and its config fields in hf_config.cc).
#ifndef WQ_COMMON_ARCHITECTURE_H_
#define WQ_COMMON_ARCHITECTURE_H_

#include "absl/strings/string_view.h"

#include "absl/types/span.h"

namespace wq {

enum class Architecture { kLlama, kMistral, kQwen2, kQwen3, kPhi3 };

// Which config field turns sliding-window attention on.
enum class SlidingWindowRule {
  kNone,             // the family has none: a non-null sliding_window is refused
  kWindowField,      // sliding_window (null: full attention) — Mistral, Phi-3
  kUseSlidingWindow  // only with use_sliding_window: true — Qwen2, Qwen3
};

struct ArchitectureSpec {
  Architecture id;
  absl::string_view hf_class;    // "architectures" entry, e.g. "Qwen2ForCausalLM"
  absl::string_view model_type;  // e.g. "qwen2"
  // q/k/v_proj always carry biases (Qwen2's attention).
  bool qkv_bias;
  // The config's attention_bias (q/k/v/o) and mlp_bias (gate/up/down)
  // fields are read; where a family has no such field, a true one is refused.
  bool attention_bias_field;
  bool mlp_bias_field;
  // Per-head RMSNorm of q and k after the projection, before RoPE (Qwen3).
  bool qk_norm;
  // self_attn.qkv_proj and mlp.gate_up_proj are stored fused (Phi-3).
  bool fused_projections;
  SlidingWindowRule sliding_window;
};

inline constexpr ArchitectureSpec kArchitectures[] = {
    // id, hf_class, model_type, qkv_bias, attention_bias_field, mlp_bias_field,
    // qk_norm, fused_projections, sliding_window
    {Architecture::kLlama, "LlamaForCausalLM", "llama", false, true, true, false, false,
     SlidingWindowRule::kNone},
    {Architecture::kMistral, "MistralForCausalLM", "mistral", false, false, false, false, false,
     SlidingWindowRule::kWindowField},
    {Architecture::kQwen2, "Qwen2ForCausalLM", "qwen2", true, false, false, false, false,
     SlidingWindowRule::kUseSlidingWindow},
    {Architecture::kQwen3, "Qwen3ForCausalLM", "qwen3", false, true, false, true, false,
     SlidingWindowRule::kUseSlidingWindow},
    {Architecture::kPhi3, "Phi3ForCausalLM", "phi3", false, false, false, false, true,
     SlidingWindowRule::kWindowField},
};

const ArchitectureSpec& SpecOf(Architecture id);

// The roles a block's linear layers play, in the order a block runs them. A
// family uses either the split roles (kQ, kK, kV; kGate, kUp) or the fused
// ones (kQkv: rows q, k, v; kGateUp: rows gate, up).
enum LinearRole { kQ, kK, kV, kQkv, kO, kGate, kUp, kGateUp, kDown, kNumLinearRoles };

// Module names inside a block ("model.layers.<i>.<name>"), by role.
inline constexpr absl::string_view kLinearRoleNames[kNumLinearRoles] = {
    "self_attn.q_proj",   "self_attn.k_proj", "self_attn.v_proj",
    "self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_proj",
    "mlp.up_proj",        "mlp.gate_up_proj", "mlp.down_proj"};

// A block's RMSNorm weights; kQNorm/kKNorm ([head_dim], applied per head)
// exist where the family has qk_norm.
enum NormRole { kInputNorm, kPostAttentionNorm, kQNorm, kKNorm, kNumNormRoles };

inline constexpr absl::string_view kNormRoleNames[kNumNormRoles] = {
    "input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"};

}  // namespace wq

#endif  // WQ_COMMON_ARCHITECTURE_H_

// The Llama decoder (LlamaForCausalLM) forward pass in fp32: RMSNorm,
// rotate_half RoPE, grouped-query attention over a KV cache, SwiGLU MLP.
//
// Forward() advances several sequences in one pass over the weights: each
// SequenceChunk is a run of new tokens of one sequence (a whole prompt, a
// prefill slice, or the single next token of a decode step), so one call
// serves prefill, batched decode and continuous batching alike.
#ifndef WQ_COMMON_LLAMA_H_
#define WQ_COMMON_LLAMA_H_

#include <array>
#include <cmath>
#include <functional>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/hf_config.h"
#include "common/linear.h"

namespace wq {

// Linear modules of decoder block i are "model.layers.<i>.<name>".
inline constexpr std::array<std::string_view, 7> kBlockLinearNames = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
    "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
    "mlp.down_proj"};
inline constexpr std::string_view kLmHeadName = "lm_head";

std::string BlockModuleName(int layer, std::string_view name);

// Where BuildLlamaWeights finds tensors: an fp32 model directory or a
// quantized artifact. Names are Hugging Face module names without ".weight".
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // fp32 vector or matrix with exactly this shape.
  virtual absl::StatusOr<const float*> F32(std::string_view name,
                                           absl::Span<const int64_t> shape) = 0;
  // Whether a tensor with this module name exists.
  virtual bool Has(std::string_view name) = 0;
  // Linear weight [out_features, in_features], dense or quantized.
  virtual absl::StatusOr<LinearWeight> Linear(std::string_view name,
                                              int64_t out_features,
                                              int64_t in_features) = 0;
};

struct LlamaLayerWeights {
  const float* input_norm = nullptr;          // [hidden]
  const float* post_attention_norm = nullptr; // [hidden]
  LinearWeight q, k, v, o, gate, up, down;
};

struct LlamaWeights {
  LlamaConfig config;
  const float* embed = nullptr;  // [vocab, hidden]
  std::vector<LlamaLayerWeights> layers;
  const float* final_norm = nullptr;
  LinearWeight lm_head;
  // Owns the memory every pointer above points into.
  std::shared_ptr<WeightSource> source;

  // Bytes of all weights as stored (quantized linears at their packed size).
  int64_t StorageBytes() const;
};

absl::StatusOr<std::shared_ptr<const LlamaWeights>> BuildLlamaWeights(
    const LlamaConfig& config, std::shared_ptr<WeightSource> source);

// Loads an unquantized Hugging Face model directory (config.json and
// *.safetensors); F32 tensors are used in place from the mapping.
absl::StatusOr<std::shared_ptr<const LlamaWeights>> LoadLlamaModelDir(
    const std::string& dir);

// Element type of the KV cache: bf16 halves its memory (and the bytes
// attention reads) at ~3 significant digits per stored key and value.
enum class KvCacheDtype { kF32, kBf16 };

// Keys and values of one sequence, per layer and KV head contiguous over
// positions: [layer][kv_head][position][head_dim], allocated up front.
class KVCache {
 public:
  KVCache(const LlamaConfig& config, int max_positions,
          KvCacheDtype dtype = KvCacheDtype::kF32);
  int max_positions() const { return max_positions_; }
  KvCacheDtype dtype() const { return dtype_; }
  // Stores head_dim keys and values of one position.
  void Store(int layer, int kv_head, int pos, const float* key, const float* value);
  // Positions [0, n) as [n, head_dim] fp32 rows: in place for kF32, else
  // converted into *scratch.
  const float* Keys(int layer, int kv_head, int n, std::vector<float>* scratch) const;
  const float* Values(int layer, int kv_head, int n, std::vector<float>* scratch) const;
  int64_t bytes() const;

 private:
  int64_t Offset(int layer, int kv_head, int pos) const {
    return ((static_cast<int64_t>(layer) * kv_heads_ + kv_head) * max_positions_ +
            pos) * head_dim_;
  }
  const float* Rows(const std::vector<float>& f32, const std::vector<uint16_t>& bf16,
                    int64_t offset, int n, std::vector<float>* scratch) const;

  KvCacheDtype dtype_;
  int kv_heads_;
  int head_dim_;
  int max_positions_;
  std::vector<float> keys_, values_;          // kF32
  std::vector<uint16_t> keys_bf16_, values_bf16_;  // kBf16
};

// The MLP's activation: silu(gate) * up.
inline float Silu(float x) { return x / (1.0f + std::exp(-x)); }

// Points inside a decoder block where activations can be observed, in order.
enum class BlockPoint {
  kAttentionInput,   // input_layernorm output: the input of q/k/v_proj
  kOProjInput,       // attention output: the input of o_proj
  kAttentionOutput,  // o_proj output, before the residual add
  kMlpInput,         // post_attention_layernorm output: the input of gate/up
  kDownInput,        // silu(gate) * up: the input of down_proj
  kMlpOutput,        // down_proj output, before the residual add
  kOutput,           // the block's output (residual stream)
};
// Receives [rows, dim] activations at each point.
using BlockObserver =
    std::function<void(BlockPoint point, const float* data, int64_t rows, int64_t dim)>;

struct SequenceChunk {
  KVCache* cache = nullptr;
  absl::Span<const int> tokens;  // new tokens, at positions start_pos...
  int start_pos = 0;
  bool all_logits = false;       // logits for every token, else the last only
};

// Hugging Face rotate_half RoPE: dimension i of a head pairs with
// i + head_dim/2 and turns by pos * theta^(-2i/head_dim); tables for
// positions [0, positions).
class RotaryEmbedding {
 public:
  RotaryEmbedding(const LlamaConfig& config, int positions);
  // Rotates `heads` consecutive heads of x for position `pos`; `inverse`
  // turns them back (the transpose, for gradients).
  void Apply(float* x, int heads, int pos, bool inverse = false) const;

 private:
  int head_dim_;
  std::vector<float> cos_;  // [positions, head_dim/2]
  std::vector<float> sin_;
};

class LlamaModel {
 public:
  explicit LlamaModel(std::shared_ptr<const LlamaWeights> weights);

  const LlamaConfig& config() const { return weights_->config; }
  const LlamaWeights& weights() const { return *weights_; }

  // Appends each chunk's keys and values to its cache and writes logits,
  // chunk after chunk ([all its tokens or its last token] x vocab), to
  // *logits. Token ids and positions are checked: INVALID_ARGUMENT /
  // OUT_OF_RANGE, with nothing written to any cache.
  absl::Status Forward(absl::Span<const SequenceChunk> chunks,
                       std::vector<float>* logits) const;

  // Runs one decoder block, with the given weights (those of `layer` or
  // modified copies), over `seqs` whole sequences of `len` tokens each at
  // positions 0..len-1, without a persistent cache: the building block of
  // block-wise calibration. x is [seqs*len, hidden], updated in place up to
  // `stop_after` (x is left unchanged if that comes before kOutput).
  void RunBlock(const LlamaLayerWeights& weights, int seqs, int len, float* x,
                const BlockObserver& observer = nullptr,
                BlockPoint stop_after = BlockPoint::kOutput) const;

 private:
  struct Scratch;
  // One block over the tokens of `chunks`; their caches hold the keys and
  // values of this block at `cache_layer`.
  void Block(const LlamaLayerWeights& l, int cache_layer,
             absl::Span<const SequenceChunk> chunks, float* x, Scratch& scratch,
             const BlockObserver& observer, BlockPoint stop_after) const;
  void Attention(absl::Span<const SequenceChunk> chunks, int layer,
                 const float* q, const float* k, const float* v,
                 float* out) const;
  std::shared_ptr<const LlamaWeights> weights_;
  RotaryEmbedding rope_;
};

}  // namespace wq

#endif  // WQ_COMMON_LLAMA_H_

// The decoder forward pass of every family in architecture.h, in fp32:
// RMSNorm, rotate_half RoPE (plain, linear, dynamic-NTK or Llama 3 scaled),
// grouped-query attention over a KV cache (optionally windowed), optional
// projection biases and per-head q/k norms, fused or split projections,
// SwiGLU MLP.
//
// Forward() advances several sequences in one pass over the weights: each
// SequenceChunk is a run of new tokens of one sequence (a whole prompt, a
// prefill slice, or the single next token of a decode step), so one call
// serves prefill, batched decode and continuous batching alike.
#ifndef WQ_COMMON_LLAMA_H_
#define WQ_COMMON_LLAMA_H_

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/io/file_util.h"
#include "common/model/hf_config.h"
#include "common/model/linear.h"
#include "common/model/model_description.h"
#include "common/formats/safetensors.h"

namespace wq {

// Where BuildLlamaWeights finds tensors: a model directory or a quantized
// artifact.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // The fp32 tensor (full name, e.g. "model.norm.weight" or
  // "model.layers.0.self_attn.q_proj.bias") with exactly this shape.
  virtual absl::StatusOr<const float*> F32(absl::string_view tensor,
                                           absl::Span<const int64_t> shape) = 0;
  // Whether a linear module of this name (without ".weight") exists.
  virtual bool Has(absl::string_view module) = 0;
  // A dense matrix [rows, cols] (the embedding) as the source serves it for
  // compute: fp32 by default (F32).
  virtual absl::StatusOr<LinearWeight> DenseMatrix(absl::string_view tensor, int64_t rows,
                                                   int64_t cols);
  // Linear weight [out_features, in_features] of a module, dense or quantized.
  virtual absl::StatusOr<LinearWeight> Linear(absl::string_view module,
                                              int64_t out_features,
                                              int64_t in_features) = 0;
};

// What an unquantized checkpoint's bf16 and f16 matrices (linears,
// embedding) become: fp32 copies, for tools that read or transform them as
// fp32; or served as stored: half the memory of fp32 and no copy beyond the
// file's own, bf16 computed in bf16 (MatMulBf16), f16 widened to fp32 in the
// kernel (MatMulF16). Vectors (norms, biases) become fp32 either way.
enum class HalfWeights { kToF32, kServeAsStored };

// The tensors of an unquantized Hugging Face checkpoint directory: the
// safetensors files model.safetensors.index.json names (or every
// *.safetensors without one), mapped; fp32 tensors are used in place, bf16
// and f16 ones converted into owned fp32 copies or (per HalfWeights)
// matrices used in place.
// Remembers which tensors were
// used, so that a checkpoint holding tensors the description does not consume
// is refused rather than served without them.
class CheckpointSource : public WeightSource {
 public:
  // Files are opened beneath dir's root (OpenForRead); `backing` kMapped
  // keeps memory bounded for a tool streaming the checkpoint, kCopied makes a
  // server immune to the files changing under it.
  absl::Status Open(const RootedPath& dir, FileBacking backing,
                    HalfWeights half = HalfWeights::kToF32);
  absl::StatusOr<const float*> F32(absl::string_view tensor,
                                   absl::Span<const int64_t> shape) override;
  bool Has(absl::string_view module) override;
  // With kServeAsStored, an aligned BF16 or F16 tensor as DenseBf16 /
  // DenseF16 in place (in the file as `backing` holds it); otherwise fp32.
  absl::StatusOr<LinearWeight> DenseMatrix(absl::string_view tensor, int64_t rows,
                                           int64_t cols) override;
  absl::StatusOr<LinearWeight> Linear(absl::string_view module, int64_t out_features,
                                      int64_t in_features) override;

  // Frees the fp32 copies made so far and drops the mapped pages read so far
  // (those of matrices used in place too: kMapped reads them from the file
  // again when touched, kCopied as zeros): pointers to fp32 copies are invalid
  // afterwards. What lets a tool stream a checkpoint tensor by tensor in
  // bounded memory.
  void ReleaseLoaded();

  // UNIMPLEMENTED naming the first tensor nothing used. RoPE tables some
  // exporters store are derived, so they are allowed.
  absl::Status CheckAllUsed() const;

 private:
  struct Loaded {
    const SafetensorsFile* file;
    const TensorInfo* info;
    F32Tensor tensor;
  };
  HalfWeights half_ = HalfWeights::kToF32;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, SafetensorsFile*, std::less<>> by_name_;
  std::set<std::string> used_;
  std::deque<Loaded> loaded_;  // deque: stable addresses
};

// One decoder block; the roles its family lacks stay empty (null).
struct LlamaLayerWeights {
  std::array<const float*, kNumNormRoles> norm{};
  std::array<LinearWeight, kNumLinearRoles> linear;
  std::array<const float*, kNumLinearRoles> bias{};  // [out_features] or null
};

struct LlamaWeights {
  LlamaConfig config;
  LinearWeight embed;  // [vocab, hidden], dense fp32 or bf16 (EmbeddingRow)
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

// Row `token` of a dense embedding (fp32 or bf16) as fp32, hidden values.
void EmbeddingRow(const LinearWeight& embed, int64_t token, float* out);

// The pieces BuildLlamaWeights assembles, for tools that go through a model
// one part at a time. LoadLmHead ties to `embed` when the source has no
// lm_head and the config ties word embeddings.
absl::StatusOr<LinearWeight> LoadEmbedding(const LlamaConfig& config, WeightSource& source);
absl::StatusOr<LlamaLayerWeights> LoadLayer(const LlamaConfig& config, WeightSource& source,
                                            int layer);
absl::StatusOr<const float*> LoadFinalNorm(const LlamaConfig& config, WeightSource& source);
absl::StatusOr<LinearWeight> LoadLmHead(const LlamaConfig& config, WeightSource& source,
                                        const LinearWeight& embed);

// Loads an unquantized Hugging Face model directory (config.json and
// *.safetensors, each opened by OpenForRead under the directory's root);
// F32 tensors (and with kServeAsStored, BF16 and F16 matrices) are used in place from the
// files as `backing` holds them (other tensors are converted into memory the
// weights own).
absl::StatusOr<std::shared_ptr<const LlamaWeights>> LoadLlamaModelDir(
    const RootedPath& dir, FileBacking backing = FileBacking::kMapped,
    HalfWeights half = HalfWeights::kToF32);

// Element type of the KV cache: bf16 halves its memory (and the bytes
// attention reads) at ~3 significant digits per stored key and value.
enum class KvCacheDtype { kF32, kBf16 };
// "fp32" or "bf16" (the inference service's --kv_cache_dtype); nullopt otherwise.
std::optional<KvCacheDtype> ParseKvCacheDtype(std::string_view name);

// Keys and values of one sequence: [layer][kv_head][slot][head_dim],
// allocated up front. Keys are stored after RoPE at their absolute position,
// so a stored key never changes. Without a sliding window each position has
// its own slot. With a window of W keys the cache is a ring of W slots
// (position p in slot p % W): no query sees a key W or more positions back,
// so a sequence's memory is bounded by the window however long it runs. A
// ring rather than dropping blocks behind the window: each sequence owns its
// cache (there is no shared block pool to return blocks to), and a ring holds
// exactly W positions.
class KVCache {
 public:
  // max_positions: the positions the sequence may reach.
  KVCache(const LlamaConfig& config, int max_positions,
          KvCacheDtype dtype = KvCacheDtype::kF32);
  int max_positions() const { return max_positions_; }
  // Positions held at once: max_positions, or the window when smaller.
  int slots() const { return slots_; }
  KvCacheDtype dtype() const { return dtype_; }
  // Positions stored so far: the next chunk continues there.
  int length() const { return length_; }
  // Positions whose keys and values are held: the last min(length, slots).
  int held() const { return std::min(length_, slots_); }
  // Whether the cache holds every key a chunk starting at `pos` reads
  // (all earlier positions, or those within the window).
  bool CanStartAt(int pos) const;
  // Stores head_dim keys and values of one position.
  void Store(int layer, int kv_head, int pos, const float* key, const float* value);
  // Called once a chunk's positions up to `length` are stored in every layer.
  void set_length(int length) { length_ = length; }
  // Positions [first, end) (all held) as [end - first, head_dim] fp32 rows:
  // in place for kF32 when they do not wrap around the ring, else copied or
  // converted into *scratch.
  const float* Keys(int layer, int kv_head, int first, int end,
                    std::vector<float>* scratch) const;
  const float* Values(int layer, int kv_head, int first, int end,
                      std::vector<float>* scratch) const;
  // Rounds `count` floats to what Store keeps (bf16 or unchanged), so a
  // chunk's queries see its own keys exactly as later chunks will.
  void RoundAsStored(float* x, int64_t count) const;
  int64_t bytes() const;

 private:
  int64_t Offset(int layer, int kv_head, int slot) const {
    return ((static_cast<int64_t>(layer) * kv_heads_ + kv_head) * slots_ + slot) * head_dim_;
  }
  const float* Rows(const std::vector<float>& f32, const std::vector<uint16_t>& bf16,
                    int layer, int kv_head, int first, int end,
                    std::vector<float>* scratch) const;

  KvCacheDtype dtype_;
  int kv_heads_;
  int head_dim_;
  int window_;  // 0: none
  int max_positions_;
  int slots_;
  int length_ = 0;
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
// Where a linear layer of this role reads its input.
BlockPoint InputPointOf(LinearRole role);
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
// i + head_dim/2 and turns by pos * inv_freq[i], inv_freq[i] =
// theta^(-2i/head_dim) as the config's rope_scaling rescales it; tables for
// positions [0, positions).
class RotaryEmbedding {
 public:
  RotaryEmbedding(const LlamaConfig& config, int positions);
  // Rotates `heads` consecutive heads of x for position `pos`; `inverse`
  // turns them back (the transpose, for gradients). `seq_len` is the length
  // the forward pass has reached: dynamic-NTK scaling stretches the base once
  // it exceeds the trained context, as transformers does per forward call.
  void Apply(float* x, int heads, int pos, bool inverse = false, int seq_len = 0) const;

  // inv_freq[head_dim/2] for a forward pass that has reached seq_len.
  static std::vector<double> InverseFrequencies(const LlamaConfig& config, int seq_len);

 private:
  const LlamaConfig config_;
  int head_dim_;
  std::vector<float> cos_;  // [positions, head_dim/2]
  std::vector<float> sin_;
};

// Positions a sequence may reach: max_position_embeddings, stretched by
// dynamic-NTK scaling's factor.
int ContextLength(const LlamaConfig& config);

class LlamaModel {
 public:
  explicit LlamaModel(std::shared_ptr<const LlamaWeights> weights);

  const LlamaConfig& config() const { return weights_->config; }
  const LlamaWeights& weights() const { return *weights_; }

  // Appends each chunk's keys and values to its cache and writes logits,
  // chunk after chunk ([all its tokens or its last token] x vocab), to
  // *logits. Token ids, positions and caches (one chunk each, holding the
  // keys the chunk reads) are checked: INVALID_ARGUMENT / OUT_OF_RANGE, with
  // nothing written to any cache.
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

  // A block's MLP output (down_proj's, before the residual add) [n, hidden]
  // from the activations at `from`: kMlpInput (post_attention_layernorm's
  // output) or kDownInput.
  void MlpOutput(const LlamaLayerWeights& weights, BlockPoint from, const float* in, int64_t n,
                 float* out) const;

 private:
  struct Scratch;
  // One block over the tokens of `chunks`; their caches hold the keys and
  // values of this block at `cache_layer`.
  void Block(const LlamaLayerWeights& l, int cache_layer,
             absl::Span<const SequenceChunk> chunks, float* x, Scratch& scratch,
             const BlockObserver& observer, BlockPoint stop_after) const;
  // outs[i] = the output of parts[i]: from their one shared pass, or split
  // out of the fused role's output where the family stores them fused.
  void Project(const LlamaLayerWeights& l, LinearRole fused, absl::Span<const LinearRole> parts,
               const float* in, int64_t n, absl::Span<float* const> outs,
               std::vector<float>& fused_out) const;
  // h = silu(gate(in)) * up(in), [n, intermediate]; `up` is scratch.
  void GatedHidden(const LlamaLayerWeights& l, const float* in, int64_t n, float* h, float* up,
                   std::vector<float>& fused_out) const;
  // out = down_proj(in) (+ bias).
  void Down(const LlamaLayerWeights& l, const float* in, int64_t n, float* out) const;
  // Attends each chunk's queries to its keys and stores its keys and values
  // (k and v are rounded in place to what the cache keeps).
  void Attention(absl::Span<const SequenceChunk> chunks, int layer,
                 const float* q, float* k, float* v,
                 float* out) const;
  std::shared_ptr<const LlamaWeights> weights_;
  RotaryEmbedding rope_;
};

}  // namespace wq

#endif  // WQ_COMMON_LLAMA_H_

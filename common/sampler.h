// Next-token selection: greedy or temperature sampling with top-k, top-p and
// a repetition penalty, reproducible for a fixed seed.
#ifndef WQ_COMMON_SAMPLER_H_
#define WQ_COMMON_SAMPLER_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace wq {

struct SamplingOptions {
  float temperature = 0.0f;         // 0: greedy
  int top_k = 0;                    // 0: all tokens
  float top_p = 1.0f;               // nucleus mass, (0, 1]
  float repetition_penalty = 1.0f;  // CTRL-style, > 0; 1 is off
  uint64_t seed = 0;
};

// INVALID_ARGUMENT naming the field and its allowed range.
absl::Status ValidateSamplingOptions(const SamplingOptions& options);

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options);

  // Picks the next token. `history` (prompt and generated ids) feeds the
  // repetition penalty. *logprob receives log p(token) under the model's own
  // distribution (softmax of the raw logits), as serving APIs report it.
  int Sample(absl::Span<const float> logits, absl::Span<const int> history,
             float* logprob);

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<float> adjusted_;
  std::vector<int> order_;
};

}  // namespace wq

#endif  // WQ_COMMON_SAMPLER_H_

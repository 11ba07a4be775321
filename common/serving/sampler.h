// Next-token selection: greedy or temperature sampling with top-k, top-p, a
// repetition penalty and OpenAI's presence and frequency penalties,
// reproducible for a fixed seed; reports the chosen token's log-probability
// and the most likely alternatives.
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
  // OpenAI's, in [-2, 2]; 0 is off. Each generated id's logit loses
  // presence_penalty once it was generated and frequency_penalty per time
  // (the prompt does not count, as in OpenAI and vLLM).
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // Most likely alternatives reported per token, [0, kMaxTopLogprobs].
  int top_logprobs = 0;
  uint64_t seed = 0;
};

inline constexpr int kMaxTopLogprobs = 20;

struct TokenLogprob {
  int id = 0;
  float logprob = 0;
};

// Log-probabilities are of the model's own distribution (softmax of the raw
// logits, before penalties, temperature, top-k and top-p), as OpenAI reports
// them: what the model thinks of a token, whatever the request's sampling.
struct SampledToken {
  int id = 0;
  float logprob = 0;
  std::vector<TokenLogprob> top;  // top_logprobs most likely, most likely first
};

// INVALID_ARGUMENT naming the field and its allowed range.
absl::Status ValidateSamplingOptions(const SamplingOptions& options);

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options);

  // Picks the next token. `history` (prompt and generated ids) feeds the
  // repetition penalty; the ids this sampler picked feed the presence and
  // frequency penalties.
  SampledToken Sample(absl::Span<const float> logits, absl::Span<const int> history);

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<float> adjusted_;
  std::vector<int> order_;
  std::vector<int> generated_counts_;  // by id, of the ids picked so far
};

}  // namespace wq

#endif  // WQ_COMMON_SAMPLER_H_

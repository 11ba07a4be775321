// Perplexity on a token stream, the protocol every wq report uses: the ids
// (encoded without BOS) are cut into non-overlapping windows; each window is
// fed as [BOS] + window[:-1] with a fresh KV cache and all of its tokens are
// scored.
#ifndef WQ_COMMON_PERPLEXITY_H_
#define WQ_COMMON_PERPLEXITY_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/llama.h"

namespace wq {

struct PerplexityOptions {
  int window = 256;
  int64_t max_tokens = 20480;  // first tokens used; the ragged tail is dropped
};

struct PerplexityResult {
  double mean_nll = 0;
  double perplexity = 0;
  int64_t scored_tokens = 0;
  int windows = 0;
  std::vector<int> argmax;  // the model's top-1 prediction at every scored position
};

absl::StatusOr<PerplexityResult> EvaluatePerplexity(const LlamaModel& model,
                                                    absl::Span<const int> ids,
                                                    int bos_id,
                                                    const PerplexityOptions& options);

// Fraction of positions where two runs predict the same top-1 token.
double Top1Agreement(absl::Span<const int> a, absl::Span<const int> b);

}  // namespace wq

#endif  // WQ_COMMON_PERPLEXITY_H_

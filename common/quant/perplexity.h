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
#include "common/model/llama.h"

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
  // Mean NLL of each window: paired comparisons of two models over the same
  // windows (PairedPerplexityRatio) need them.
  std::vector<double> window_mean_nll;
};

absl::StatusOr<PerplexityResult> EvaluatePerplexity(const LlamaModel& model,
                                                    absl::Span<const int> ids,
                                                    int bos_id,
                                                    const PerplexityOptions& options);

// Fraction of positions where two runs predict the same top-1 token.
double Top1Agreement(absl::Span<const int> a, absl::Span<const int> b);

// PPL(a) / PPL(b) for two evaluations of the same windows, with a 95 %
// interval from the spread of the per-window NLL differences (windows as
// independent samples; tokens inside a window are not). An interval that
// contains 1 means the two models are not distinguishable on this text.
// {1, 1, 1} when fewer than two windows pair up.
struct PerplexityRatio {
  double ratio = 1, low = 1, high = 1;
};
PerplexityRatio PairedPerplexityRatio(const PerplexityResult& a, const PerplexityResult& b);

}  // namespace wq

#endif  // WQ_COMMON_PERPLEXITY_H_

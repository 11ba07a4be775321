#include "common/quant/perplexity.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/io/parallel.h"

namespace wq {

absl::StatusOr<PerplexityResult> EvaluatePerplexity(const LlamaModel& model,
                                                    absl::Span<const int> ids,
                                                    int bos_id,
                                                    const PerplexityOptions& options) {
  if (options.window < 2 || options.window > model.config().max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "window must be in [2, ", model.config().max_position_embeddings, "], got ",
        options.window));
  }
  const int64_t usable = std::min<int64_t>(ids.size(), options.max_tokens);
  const int windows = static_cast<int>(usable / options.window);
  if (windows == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "need at least ", options.window, " tokens, got ", usable));
  }
  const int vocab = model.config().vocab_size;
  std::vector<double> window_nll(windows);
  PerplexityResult result;
  result.argmax.resize(static_cast<size_t>(windows) * options.window);
  std::vector<absl::Status> statuses(windows);

  // Windows are independent; each runs the whole model over its tokens.
  ParallelFor(0, windows, [&](int w) {
    absl::Span<const int> target = ids.subspan(static_cast<size_t>(w) * options.window,
                                               options.window);
    std::vector<int> input;
    input.reserve(options.window);
    input.push_back(bos_id);
    input.insert(input.end(), target.begin(), target.end() - 1);
    KVCache cache(model.config(), options.window);
    SequenceChunk chunk;
    chunk.cache = &cache;
    chunk.tokens = input;
    chunk.all_logits = true;
    std::vector<float> logits;
    statuses[w] = model.Forward({&chunk, 1}, &logits);
    if (!statuses[w].ok()) return;
    double nll = 0;
    for (int t = 0; t < options.window; ++t) {
      const float* row = logits.data() + static_cast<size_t>(t) * vocab;
      const float* best = std::max_element(row, row + vocab);
      double sum = 0;
      for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(row[i]) - *best);
      nll += std::log(sum) + *best - row[target[t]];
      result.argmax[static_cast<size_t>(w) * options.window + t] =
          static_cast<int>(best - row);
    }
    window_nll[w] = nll;
  });
  for (const absl::Status& s : statuses) {
    if (!s.ok()) return s;
  }
  double total = 0;
  for (double nll : window_nll) total += nll;
  result.windows = windows;
  result.scored_tokens = static_cast<int64_t>(windows) * options.window;
  result.mean_nll = total / result.scored_tokens;
  result.perplexity = std::exp(result.mean_nll);
  for (double& nll : window_nll) nll /= options.window;
  result.window_mean_nll = std::move(window_nll);
  return result;
}

PerplexityRatio PairedPerplexityRatio(const PerplexityResult& a, const PerplexityResult& b) {
  const size_t n = std::min(a.window_mean_nll.size(), b.window_mean_nll.size());
  if (n < 2) return {};
  double sum = 0, sum_squares = 0;
  for (size_t w = 0; w < n; ++w) {
    const double d = a.window_mean_nll[w] - b.window_mean_nll[w];
    sum += d;
    sum_squares += d * d;
  }
  const double mean = sum / n;
  const double variance = std::max(0.0, (sum_squares - n * mean * mean) / (n - 1));
  const double half_width = 1.96 * std::sqrt(variance / n);
  return {std::exp(mean), std::exp(mean - half_width), std::exp(mean + half_width)};
}

double Top1Agreement(absl::Span<const int> a, absl::Span<const int> b) {
  const size_t n = std::min(a.size(), b.size());
  if (n == 0) return 0;
  size_t same = 0;
  for (size_t i = 0; i < n; ++i) same += a[i] == b[i];
  return static_cast<double>(same) / n;
}

}  // namespace wq

#include "common/serving/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace wq {

absl::Status ValidateSamplingOptions(const SamplingOptions& o) {
  if (!(o.temperature >= 0.0f) || !std::isfinite(o.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be >= 0 (0 = greedy), got ", o.temperature));
  }
  if (o.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be >= 0 (0 = no limit), got ", o.top_k));
  }
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p must be in (0, 1], got ", o.top_p));
  }
  if (!(o.repetition_penalty > 0.0f) || !std::isfinite(o.repetition_penalty)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "repetition_penalty must be > 0 (1 = off), got ", o.repetition_penalty));
  }
  if (!(o.presence_penalty >= -2.0f && o.presence_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("presence_penalty must be in [-2, 2], got ", o.presence_penalty));
  }
  if (!(o.frequency_penalty >= -2.0f && o.frequency_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("frequency_penalty must be in [-2, 2], got ", o.frequency_penalty));
  }
  if (o.top_logprobs < 0 || o.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "top_logprobs must be in [0, ", kMaxTopLogprobs, "], got ", o.top_logprobs));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingOptions& options)
    : options_(options), rng_(options.seed) {}

SampledToken Sampler::Sample(absl::Span<const float> logits, absl::Span<const int> history) {
  const int vocab = static_cast<int>(logits.size());
  adjusted_.assign(logits.begin(), logits.end());
  if (options_.repetition_penalty != 1.0f) {
    for (int id : history) {
      if (id < 0 || id >= vocab) continue;
      // From the raw logit, so an id seen twice is penalised once.
      const float raw = logits[id];
      adjusted_[id] = raw > 0 ? raw / options_.repetition_penalty
                              : raw * options_.repetition_penalty;
    }
  }
  if (options_.presence_penalty != 0.0f || options_.frequency_penalty != 0.0f) {
    for (int id = 0; id < static_cast<int>(generated_counts_.size()) && id < vocab; ++id) {
      const int count = generated_counts_[id];
      if (count == 0) continue;
      adjusted_[id] -= options_.presence_penalty + options_.frequency_penalty * count;
    }
  }

  int chosen;
  if (options_.temperature == 0.0f) {
    chosen = static_cast<int>(std::max_element(adjusted_.begin(), adjusted_.end()) -
                              adjusted_.begin());
  } else {
    order_.resize(vocab);
    std::iota(order_.begin(), order_.end(), 0);
    const int k = options_.top_k > 0 ? std::min(options_.top_k, vocab) : vocab;
    auto by_logit = [&](int a, int b) {
      return adjusted_[a] > adjusted_[b] || (adjusted_[a] == adjusted_[b] && a < b);
    };
    std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), by_logit);
    order_.resize(k);
    // Softmax over the k best at the given temperature, then the nucleus.
    const double max_logit = adjusted_[order_[0]];
    std::vector<double> probs(k);
    double sum = 0;
    for (int i = 0; i < k; ++i) {
      probs[i] = std::exp((adjusted_[order_[i]] - max_logit) / options_.temperature);
      sum += probs[i];
    }
    int keep = k;
    double cumulative = 0;
    for (int i = 0; i < k; ++i) {
      cumulative += probs[i] / sum;
      if (cumulative >= options_.top_p) {
        keep = i + 1;
        break;
      }
    }
    double kept_mass = 0;
    for (int i = 0; i < keep; ++i) kept_mass += probs[i];
    const double u = std::uniform_real_distribution<double>(0.0, kept_mass)(rng_);
    double acc = 0;
    chosen = order_[keep - 1];
    for (int i = 0; i < keep; ++i) {
      acc += probs[i];
      if (u < acc) {
        chosen = order_[i];
        break;
      }
    }
  }

  if (static_cast<int>(generated_counts_.size()) <= chosen) {
    generated_counts_.resize(chosen + 1, 0);
  }
  ++generated_counts_[chosen];

  SampledToken token;
  token.id = chosen;
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - max_logit);
  const float log_normalizer = static_cast<float>(max_logit + std::log(sum));
  token.logprob = logits[chosen] - log_normalizer;
  const int top = std::min(options_.top_logprobs, vocab);
  if (top > 0) {
    order_.resize(vocab);
    std::iota(order_.begin(), order_.end(), 0);
    std::partial_sort(order_.begin(), order_.begin() + top, order_.end(), [&](int a, int b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int i = 0; i < top; ++i) {
      token.top.push_back({order_[i], logits[order_[i]] - log_normalizer});
    }
  }
  return token;
}

}  // namespace wq

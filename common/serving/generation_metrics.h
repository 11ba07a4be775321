// The Prometheus series of one model's GenerationScheduler, named after
// vLLM's (vllm: -> wq:) and labelled model_name. The scheduler calls these
// from its loop; each is a few relaxed atomic operations.
#ifndef WQ_COMMON_GENERATION_METRICS_H_
#define WQ_COMMON_GENERATION_METRICS_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "common/io/metrics.h"

namespace wq {

enum class FinishReason;

class GenerationMetrics {
 public:
  // `waiting` and `running` are read at scrape time (under the scheduler's
  // own locks) until this object is destroyed.
  GenerationMetrics(std::string model_name, std::function<int()> waiting,
                    std::function<int()> running);
  // Stops exporting this model's gauges; its counters and histograms stay
  // (a reload continues them).
  ~GenerationMetrics();

  void OnPromptTokens(int tokens) { prompt_tokens_->Inc(tokens); }
  // Time to first token is from submission (queue time included), as vLLM's.
  void OnFirstToken(absl::Duration since_submitted);
  // Every token after the first: the time since the previous one.
  void OnNextToken(absl::Duration since_previous);
  void OnFinish(FinishReason reason, absl::Duration queued, absl::Duration total);
  // KV-cache positions filled and allocated over the running sequences.
  void SetKvCache(int used_tokens, int capacity_tokens);

 private:
  const std::string model_name_;
  std::shared_ptr<Counter> prompt_tokens_, generation_tokens_;
  std::shared_ptr<Histogram> time_to_first_token_, time_per_output_token_, e2e_latency_,
      queue_time_;
  std::shared_ptr<Gauge> kv_cache_used_, kv_cache_capacity_;
  MetricFamily<Counter>* finished_;  // by model_name and finished_reason
  std::shared_ptr<void> waiting_collector_, running_collector_;
};

}  // namespace wq

#endif  // WQ_COMMON_GENERATION_METRICS_H_

#include "common/serving/generation_metrics.h"

#include <vector>

#include "common/serving/scheduler.h"

namespace wq {
namespace {

const std::vector<std::string> kModelLabel = {"model_name"};

// vLLM's buckets, extended down to 1 ms: a small model on a CPU decodes a
// token in well under vLLM's smallest inter-token bucket.
const std::vector<double> kTimeToFirstTokenBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
    0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
const std::vector<double> kTimePerOutputTokenBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
    0.2,   0.3,    0.4,   0.5,  0.75,  1.0,  2.5,   5.0};
const std::vector<double> kRequestLatencyBuckets = {
    0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0,
    10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 300.0};

const char* FinishReasonLabel(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return "length";
    case FinishReason::kEos: return "eos";
    case FinishReason::kStopSequence: return "stop_sequence";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "error";
}

MetricsRegistry& Registry() { return MetricsRegistry::Default(); }

MetricFamily<Gauge>& KvCacheUsed() {
  return Registry().AddGauge("wq:kv_cache_usage_tokens",
                             "KV-cache positions holding a token, over running sequences.",
                             kModelLabel);
}

MetricFamily<Gauge>& KvCacheCapacity() {
  return Registry().AddGauge("wq:kv_cache_capacity_tokens",
                             "KV-cache positions allocated for running sequences.",
                             kModelLabel);
}

std::shared_ptr<void> Collect(const std::string& name, const std::string& help,
                              const std::string& model_name, std::function<int()> read) {
  return Registry().AddScrapedGauge(name, help, kModelLabel)
      .AddCollector([model_name, read = std::move(read)](const ScrapedGaugeFamily::Emit& emit) {
        emit({model_name}, read());
      });
}

}  // namespace

GenerationMetrics::GenerationMetrics(std::string model_name, std::function<int()> waiting,
                                     std::function<int()> running)
    : model_name_(std::move(model_name)) {
  const std::vector<std::string> labels = {model_name_};
  prompt_tokens_ = Registry()
                       .AddCounter("wq:prompt_tokens_total", "Prompt tokens prefilled.",
                                   kModelLabel)
                       .WithLabels(labels);
  generation_tokens_ = Registry()
                           .AddCounter("wq:generation_tokens_total", "Tokens generated.",
                                       kModelLabel)
                           .WithLabels(labels);
  time_to_first_token_ =
      Registry()
          .AddHistogram("wq:time_to_first_token_seconds",
                        "From submission (queue included) to the first generated token.",
                        kModelLabel, kTimeToFirstTokenBuckets)
          .WithLabels(labels);
  time_per_output_token_ =
      Registry()
          .AddHistogram("wq:time_per_output_token_seconds",
                        "Between consecutive generated tokens of a request.", kModelLabel,
                        kTimePerOutputTokenBuckets)
          .WithLabels(labels);
  e2e_latency_ = Registry()
                     .AddHistogram("wq:e2e_request_latency_seconds",
                                   "From submission to the end of a generation, any reason.",
                                   kModelLabel, kRequestLatencyBuckets)
                     .WithLabels(labels);
  queue_time_ = Registry()
                    .AddHistogram("wq:request_queue_time_seconds",
                                  "From submission to admission into the running batch.",
                                  kModelLabel, kRequestLatencyBuckets)
                    .WithLabels(labels);
  finished_ = &Registry().AddCounter("wq:request_finished_total",
                                     "Generations ended, by finish reason.",
                                     {"model_name", "finished_reason"});
  kv_cache_used_ = KvCacheUsed().WithLabels(labels);
  kv_cache_capacity_ = KvCacheCapacity().WithLabels(labels);
  waiting_collector_ = Collect("wq:num_requests_waiting",
                               "Generations queued, waiting for a running place.", model_name_,
                               std::move(waiting));
  running_collector_ = Collect("wq:num_requests_running", "Generations in the running batch.",
                               model_name_, std::move(running));
}

GenerationMetrics::~GenerationMetrics() {
  KvCacheUsed().Remove({model_name_});
  KvCacheCapacity().Remove({model_name_});
}

void GenerationMetrics::OnFirstToken(absl::Duration since_submitted) {
  generation_tokens_->Inc();
  time_to_first_token_->Observe(absl::ToDoubleSeconds(since_submitted));
}

void GenerationMetrics::OnNextToken(absl::Duration since_previous) {
  generation_tokens_->Inc();
  time_per_output_token_->Observe(absl::ToDoubleSeconds(since_previous));
}

void GenerationMetrics::OnFinish(FinishReason reason, absl::Duration queued,
                                 absl::Duration total) {
  finished_->WithLabels({model_name_, FinishReasonLabel(reason)})->Inc();
  queue_time_->Observe(absl::ToDoubleSeconds(queued));
  e2e_latency_->Observe(absl::ToDoubleSeconds(total));
}

void GenerationMetrics::SetKvCache(int used_tokens, int capacity_tokens) {
  kv_cache_used_->Set(used_tokens);
  kv_cache_capacity_->Set(capacity_tokens);
}

}  // namespace wq

// Prometheus metrics: counters, gauges and histograms with labels, rendered in
// the text exposition format 0.0.4 for GET /metrics. Hand-written because
// Debian ships no prometheus-cpp; it is what wq needs and no more.
//
// Recording is lock-free (relaxed atomics): a hot path looks its labelled
// series up once (WithLabels takes the family's lock) and keeps the pointer.
// No gRPC or HTTP dependency, so every layer from the scheduler up can record.
//
//   static MetricFamily<Counter>& tokens = MetricsRegistry::Default().AddCounter(
//       "wq:generation_tokens_total", "Generated tokens.", {"model_name"});
//   std::shared_ptr<Counter> series = tokens.WithLabels({"stories260K"});
//   series->Inc();
#ifndef WQ_COMMON_METRICS_H_
#define WQ_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace wq {

// Adds atomically (std::atomic<double> has no fetch_add before C++20).
void AtomicAdd(std::atomic<double>& target, double delta);

class Counter {
 public:
  // `delta` must be >= 0 (a counter only goes up); a negative one is ignored.
  void Inc(double delta = 1);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Inc(double delta = 1) { AtomicAdd(value_, delta); }
  void Dec(double delta = 1) { AtomicAdd(value_, -delta); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // `bounds`: the buckets' upper bounds (le), ascending; +Inf is implicit.
  explicit Histogram(std::shared_ptr<const std::vector<double>> bounds);

  void Observe(double value);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // per bound, then +Inf (== count)
    double sum = 0;
  };
  // Counts read bucket by bucket; the +Inf bucket and _count are their total,
  // so a scrape is always self-consistent.
  Snapshot Read() const;
  const std::vector<double>& bounds() const { return *bounds_; }

 private:
  std::shared_ptr<const std::vector<double>> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds + 1 (+Inf)
  std::atomic<double> sum_{0};
};

// Rendering of one family; the registry holds these by name.
class MetricFamilyBase {
 public:
  MetricFamilyBase(std::string name, std::string help, std::string type,
                   std::vector<std::string> label_names);
  virtual ~MetricFamilyBase() = default;

  const std::string& name() const { return name_; }
  const std::string& type() const { return type_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  // Appends "# HELP", "# TYPE" and the samples.
  void Render(std::string& out) const;

 protected:
  // Appends the samples, each line through AppendSample.
  virtual void RenderSamples(std::string& out) const = 0;
  // `name_suffix` ("_bucket"); `extra_label`: a last label ("le") or empty.
  void AppendSample(std::string& out, const char* name_suffix,
                    const std::vector<std::string>& label_values, const std::string& extra_label,
                    const std::string& extra_value, double value) const;
  // Aborts (a bug in the caller) unless there is one value per label name.
  void CheckLabelCount(const std::vector<std::string>& label_values) const;

 private:
  const std::string name_, help_, type_;
  const std::vector<std::string> label_names_;
};

// One family of series sharing a name, told apart by label values.
template <typename Metric>
class MetricFamily : public MetricFamilyBase {
 public:
  using Factory = std::function<std::shared_ptr<Metric>()>;
  MetricFamily(std::string name, std::string help, std::string type,
               std::vector<std::string> label_names, Factory factory)
      : MetricFamilyBase(std::move(name), std::move(help), std::move(type),
                         std::move(label_names)),
        factory_(std::move(factory)) {}

  // The series with these label values (one per label name, in order),
  // created at zero on first use. Keep it: recording through it takes no lock,
  // and it stays valid after Remove (it is then no longer exported).
  std::shared_ptr<Metric> WithLabels(const std::vector<std::string>& label_values) {
    CheckLabelCount(label_values);
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Metric>& series = series_[label_values];
    if (series == nullptr) series = factory_();
    return series;
  }

  // Stops exporting a series (a gauge of an unloaded model).
  void Remove(const std::vector<std::string>& label_values) {
    absl::MutexLock lock(&mu_);
    series_.erase(label_values);
  }

 protected:
  void RenderSamples(std::string& out) const override;

 private:
  const Factory factory_;
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::shared_ptr<Metric>> series_ ABSL_GUARDED_BY(mu_);
};

template <>
void MetricFamily<Counter>::RenderSamples(std::string& out) const;
template <>
void MetricFamily<Gauge>::RenderSamples(std::string& out) const;
template <>
void MetricFamily<Histogram>::RenderSamples(std::string& out) const;

// A gauge family whose samples are read at scrape time from state kept
// elsewhere (a job table): exact, with no bookkeeping at every transition.
class ScrapedGaugeFamily : public MetricFamilyBase {
 public:
  // Calls emit(label_values, value) once per sample.
  using Emit = std::function<void(const std::vector<std::string>&, double)>;
  using Collect = std::function<void(const Emit&)>;

  using MetricFamilyBase::MetricFamilyBase;

  // Registers `collect` until the returned handle is destroyed. It runs
  // under this family's lock and may take its owner's; it must not record
  // into or add to the registry. Several may be registered (one per owner).
  [[nodiscard]] std::shared_ptr<void> AddCollector(Collect collect);

 protected:
  void RenderSamples(std::string& out) const override;

 private:
  mutable absl::Mutex mu_;
  std::map<int, Collect> collectors_ ABSL_GUARDED_BY(mu_);
  int next_id_ ABSL_GUARDED_BY(mu_) = 0;
};

class MetricsRegistry {
 public:
  // The process's registry, which GET /metrics renders.
  static MetricsRegistry& Default();

  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Adding a name again with the same type and labels returns the family
  // already there. Names are the program's constants, so an invalid name or
  // label, a clash with another type or labels, or "le" as a histogram label
  // is a bug and aborts with a message. Families live as long as the registry.
  MetricFamily<Counter>& AddCounter(const std::string& name, const std::string& help,
                                    std::vector<std::string> label_names = {});
  MetricFamily<Gauge>& AddGauge(const std::string& name, const std::string& help,
                                std::vector<std::string> label_names = {});
  // `bounds`: ascending, finite.
  MetricFamily<Histogram>& AddHistogram(const std::string& name, const std::string& help,
                                        std::vector<std::string> label_names,
                                        std::vector<double> bounds);
  ScrapedGaugeFamily& AddScrapedGauge(const std::string& name, const std::string& help,
                                      std::vector<std::string> label_names = {});

  // Every family in name order, in the text format 0.0.4.
  std::string Render() const;

 private:
  // The family named `name` if its type and labels match, else creates it
  // with `make`.
  MetricFamilyBase& Add(const std::string& name, const std::string& type,
                        const std::vector<std::string>& label_names,
                        const std::function<std::unique_ptr<MetricFamilyBase>()>& make);

  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<MetricFamilyBase>> families_ ABSL_GUARDED_BY(mu_);
};

// The Content-Type of Render()'s output.
inline constexpr char kPrometheusContentType[] = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace wq

#endif  // WQ_COMMON_METRICS_H_

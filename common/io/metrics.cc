#include "common/io/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace wq {
namespace {

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "metrics: %s\n", message.c_str());
  std::abort();
}

bool IsNameChar(char c, bool first, bool colon_allowed) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
  if (c == ':') return colon_allowed;
  return !first && c >= '0' && c <= '9';
}

// [a-zA-Z_:][a-zA-Z0-9_:]* for metrics; labels without ':' and not "__*".
bool IsValidName(const std::string& name, bool is_label) {
  if (name.empty() || (is_label && name.rfind("__", 0) == 0)) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, !is_label)) return false;
  }
  return true;
}

// Shortest text that reads back as the same double; Prometheus' spellings of
// the infinities and NaN.
std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[32];
  const std::to_chars_result result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

// Label values escape backslash, double quote and newline; HELP text only
// backslash and newline.
void AppendEscaped(std::string& out, const std::string& text, bool quote) {
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

}  // namespace

void AtomicAdd(std::atomic<double>& target, double delta) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + delta, std::memory_order_relaxed)) {
  }
}

void Counter::Inc(double delta) {
  if (delta > 0) AtomicAdd(value_, delta);
}

Histogram::Histogram(std::shared_ptr<const std::vector<double>> bounds)
    : bounds_(std::move(bounds)),
      counts_(new std::atomic<uint64_t>[bounds_->size() + 1]) {
  for (size_t i = 0; i <= bounds_->size(); ++i) counts_[i].store(0);
}

void Histogram::Observe(double value) {
  // Buckets are "less than or equal": the first bound >= value.
  const size_t bucket =
      std::lower_bound(bounds_->begin(), bounds_->end(), value) - bounds_->begin();
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, value);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_->size(); ++i) {
    total += counts_[i].load(std::memory_order_relaxed);
    snapshot.cumulative.push_back(total);
  }
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

MetricFamilyBase::MetricFamilyBase(std::string name, std::string help, std::string type,
                                   std::vector<std::string> label_names)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(std::move(type)),
      label_names_(std::move(label_names)) {}

void MetricFamilyBase::Render(std::string& out) const {
  absl::StrAppend(&out, "# HELP ", name_, " ");
  AppendEscaped(out, help_, /*quote=*/false);
  absl::StrAppend(&out, "\n# TYPE ", name_, " ", type_, "\n");
  RenderSamples(out);
}

void MetricFamilyBase::CheckLabelCount(const std::vector<std::string>& label_values) const {
  if (label_values.size() != label_names_.size()) {
    Fail(absl::StrCat(name_, " has labels {", absl::StrJoin(label_names_, ","), "} but ",
                      label_values.size(), " values were given"));
  }
}

void MetricFamilyBase::AppendSample(std::string& out, const char* name_suffix,
                                    const std::vector<std::string>& label_values,
                                    const std::string& extra_label,
                                    const std::string& extra_value, double value) const {
  absl::StrAppend(&out, name_, name_suffix);
  if (!label_names_.empty() || !extra_label.empty()) {
    out += '{';
    const char* separator = "";
    for (size_t i = 0; i < label_names_.size(); ++i) {
      absl::StrAppend(&out, separator, label_names_[i], "=\"");
      AppendEscaped(out, label_values[i], /*quote=*/true);
      out += '"';
      separator = ",";
    }
    if (!extra_label.empty()) {
      absl::StrAppend(&out, separator, extra_label, "=\"", extra_value, "\"");
    }
    out += '}';
  }
  absl::StrAppend(&out, " ", FormatValue(value), "\n");
}

template <>
void MetricFamily<Counter>::RenderSamples(std::string& out) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [labels, counter] : series_) {
    AppendSample(out, "", labels, "", "", counter->Value());
  }
}

template <>
void MetricFamily<Gauge>::RenderSamples(std::string& out) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [labels, gauge] : series_) {
    AppendSample(out, "", labels, "", "", gauge->Value());
  }
}

template <>
void MetricFamily<Histogram>::RenderSamples(std::string& out) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [labels, histogram] : series_) {
    const Histogram::Snapshot snapshot = histogram->Read();
    const std::vector<double>& bounds = histogram->bounds();
    for (size_t i = 0; i < bounds.size(); ++i) {
      AppendSample(out, "_bucket", labels, "le", FormatValue(bounds[i]),
                   static_cast<double>(snapshot.cumulative[i]));
    }
    const double count = static_cast<double>(snapshot.cumulative.back());
    AppendSample(out, "_bucket", labels, "le", "+Inf", count);
    AppendSample(out, "_sum", labels, "", "", snapshot.sum);
    AppendSample(out, "_count", labels, "", "", count);
  }
}

std::shared_ptr<void> ScrapedGaugeFamily::AddCollector(Collect collect) {
  int id;
  {
    absl::MutexLock lock(&mu_);
    id = next_id_++;
    collectors_[id] = std::move(collect);
  }
  // The registry, and so this family, outlives the handles.
  return std::shared_ptr<void>(nullptr, [this, id](void*) {
    absl::MutexLock lock(&mu_);
    collectors_.erase(id);
  });
}

void ScrapedGaugeFamily::RenderSamples(std::string& out) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, collect] : collectors_) {
    collect([&](const std::vector<std::string>& label_values, double value) {
      CheckLabelCount(label_values);
      AppendSample(out, "", label_values, "", "", value);
    });
  }
}

MetricsRegistry& MetricsRegistry::Default() {
  static MetricsRegistry* const registry = new MetricsRegistry();
  return *registry;
}

MetricFamilyBase& MetricsRegistry::Add(
    const std::string& name, const std::string& type, const std::vector<std::string>& label_names,
    const std::function<std::unique_ptr<MetricFamilyBase>()>& make) {
  if (!IsValidName(name, /*is_label=*/false)) Fail(absl::StrCat("invalid metric name ", name));
  for (const std::string& label : label_names) {
    if (!IsValidName(label, /*is_label=*/true)) {
      Fail(absl::StrCat(name, ": invalid label name ", label));
    }
    if (type == "histogram" && label == "le") {
      Fail(absl::StrCat(name, ": a histogram cannot have a label \"le\""));
    }
  }
  absl::MutexLock lock(&mu_);
  std::unique_ptr<MetricFamilyBase>& family = families_[name];
  if (family == nullptr) {
    family = make();
  } else if (family->type() != type || family->label_names() != label_names) {
    Fail(absl::StrCat(name, " is already a ", family->type(), " with labels {",
                      absl::StrJoin(family->label_names(), ","), "}"));
  }
  return *family;
}

MetricFamily<Counter>& MetricsRegistry::AddCounter(const std::string& name,
                                                   const std::string& help,
                                                   std::vector<std::string> label_names) {
  return static_cast<MetricFamily<Counter>&>(Add(name, "counter", label_names, [&] {
    return std::make_unique<MetricFamily<Counter>>(name, help, "counter", label_names,
                                                   [] { return std::make_shared<Counter>(); });
  }));
}

MetricFamily<Gauge>& MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                                               std::vector<std::string> label_names) {
  MetricFamilyBase& family = Add(name, "gauge", label_names, [&] {
    return std::make_unique<MetricFamily<Gauge>>(name, help, "gauge", label_names,
                                                 [] { return std::make_shared<Gauge>(); });
  });
  auto* gauge = dynamic_cast<MetricFamily<Gauge>*>(&family);
  if (gauge == nullptr) Fail(absl::StrCat(name, " is already a scraped gauge"));
  return *gauge;
}

MetricFamily<Histogram>& MetricsRegistry::AddHistogram(const std::string& name,
                                                       const std::string& help,
                                                       std::vector<std::string> label_names,
                                                       std::vector<double> bounds) {
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) {
      Fail(absl::StrCat(name, ": bucket bounds must be finite and ascending"));
    }
  }
  auto shared_bounds = std::make_shared<const std::vector<double>>(std::move(bounds));
  return static_cast<MetricFamily<Histogram>&>(Add(name, "histogram", label_names, [&] {
    return std::make_unique<MetricFamily<Histogram>>(
        name, help, "histogram", label_names,
        [shared_bounds] { return std::make_shared<Histogram>(shared_bounds); });
  }));
}

ScrapedGaugeFamily& MetricsRegistry::AddScrapedGauge(const std::string& name,
                                                     const std::string& help,
                                                     std::vector<std::string> label_names) {
  // The type "gauge" is shared with AddGauge; the class tells them apart.
  MetricFamilyBase& family = Add(name, "gauge", label_names, [&] {
    return std::make_unique<ScrapedGaugeFamily>(name, help, "gauge", label_names);
  });
  auto* scraped = dynamic_cast<ScrapedGaugeFamily*>(&family);
  if (scraped == nullptr) Fail(absl::StrCat(name, " is already a set (not scraped) gauge"));
  return *scraped;
}

std::string MetricsRegistry::Render() const {
  // Families are never removed, so they are rendered outside mu_: a
  // collector may take its owner's lock, under which that owner may add a
  // family.
  std::vector<const MetricFamilyBase*> families;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, family] : families_) families.push_back(family.get());
  }
  std::string out;
  for (const MetricFamilyBase* family : families) family->Render(out);
  return out;
}

}  // namespace wq

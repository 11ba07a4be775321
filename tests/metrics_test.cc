// The Prometheus registry: exact exposition text, escaping and histogram
// buckets, read back by the reference parser (prometheus_client, through
// tests/prometheus_parse.py), and counts under concurrent recording.
#include "common/io/metrics.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/prometheus_parser.h"

namespace wq {
namespace {

TEST(MetricsTest, RendersCountersAndGaugesWithLabels) {
  MetricsRegistry registry;
  auto& requests = registry.AddCounter("wq:requests_total", "Requests.", {"method", "code"});
  requests.WithLabels({"/wq.v1.X/Generate", "OK"})->Inc();
  requests.WithLabels({"/wq.v1.X/Generate", "OK"})->Inc(2);
  requests.WithLabels({"/wq.v1.X/Generate", "NOT_FOUND"})->Inc();
  registry.AddGauge("wq:models_loaded", "Loaded models.").WithLabels({})->Set(0.25);
  EXPECT_EQ(registry.Render(),
            "# HELP wq:models_loaded Loaded models.\n"
            "# TYPE wq:models_loaded gauge\n"
            "wq:models_loaded 0.25\n"
            "# HELP wq:requests_total Requests.\n"
            "# TYPE wq:requests_total counter\n"
            "wq:requests_total{method=\"/wq.v1.X/Generate\",code=\"NOT_FOUND\"} 1\n"
            "wq:requests_total{method=\"/wq.v1.X/Generate\",code=\"OK\"} 3\n");
}

TEST(MetricsTest, CounterIgnoresNegativeIncrementsGaugeGoesBothWays) {
  Counter counter;
  counter.Inc(5);
  counter.Inc(-3);
  EXPECT_EQ(counter.Value(), 5);
  Gauge gauge;
  gauge.Inc(4);
  gauge.Dec(1.5);
  EXPECT_EQ(gauge.Value(), 2.5);
}

TEST(MetricsTest, EscapesLabelValuesAndHelpAsTheParserReadsThem) {
  MetricsRegistry registry;
  const std::string nasty = "a\"quoted\" back\\slash\nnew line {x=\"y\"}, é";
  registry.AddCounter("wq:nasty_total", "Help with \\ and\nnewline \"quotes\".", {"value"})
      .WithLabels({nasty})
      ->Inc(7);
  const std::string text = registry.Render();
  EXPECT_NE(text.find(R"(wq:nasty_total{value="a\"quoted\" back\\slash\nnew line {x=\"y\"}, é"} 7)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(# HELP wq:nasty_total Help with \\ and\nnewline "quotes".)"),
            std::string::npos)
      << text;

  const nlohmann::json parsed = ParseWithPrometheusClient(text);
  ASSERT_TRUE(parsed.is_object()) << text;
  ASSERT_EQ(parsed["families"].size(), 1u);
  const nlohmann::json& family = parsed["families"][0];
  EXPECT_EQ(family["name"], "wq:nasty");
  EXPECT_EQ(family["type"], "counter");
  EXPECT_EQ(family["documentation"], "Help with \\ and\nnewline \"quotes\".");
  ASSERT_EQ(family["samples"].size(), 1u);
  EXPECT_EQ(family["samples"][0]["labels"]["value"], nasty);
  EXPECT_EQ(family["samples"][0]["value"], 7.0);
}

TEST(MetricsTest, HistogramBucketsAreCumulativeAndInclusive) {
  MetricsRegistry registry;
  auto& family = registry.AddHistogram("wq:latency_seconds", "Latency.", {"model_name"},
                                       {0.1, 0.5, 1});
  std::shared_ptr<Histogram> histogram = family.WithLabels({"m"});
  // le is "less than or equal": 0.1 lands in the first bucket, 1 in the last
  // finite one, 2 only in +Inf.
  for (double v : {0.05, 0.1, 0.3, 1.0, 2.0}) histogram->Observe(v);
  EXPECT_EQ(registry.Render(),
            "# HELP wq:latency_seconds Latency.\n"
            "# TYPE wq:latency_seconds histogram\n"
            "wq:latency_seconds_bucket{model_name=\"m\",le=\"0.1\"} 2\n"
            "wq:latency_seconds_bucket{model_name=\"m\",le=\"0.5\"} 3\n"
            "wq:latency_seconds_bucket{model_name=\"m\",le=\"1\"} 4\n"
            "wq:latency_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 5\n"
            "wq:latency_seconds_sum{model_name=\"m\"} 3.45\n"
            "wq:latency_seconds_count{model_name=\"m\"} 5\n");

  const nlohmann::json parsed = ParseWithPrometheusClient(registry.Render());
  ASSERT_TRUE(parsed.is_object());
  ASSERT_EQ(parsed["families"].size(), 1u);
  EXPECT_EQ(parsed["families"][0]["type"], "histogram");
  std::vector<double> buckets;
  for (const auto& sample : parsed["families"][0]["samples"]) {
    if (sample["name"] == "wq:latency_seconds_bucket") buckets.push_back(sample["value"]);
    if (sample["name"] == "wq:latency_seconds_sum") {
      EXPECT_DOUBLE_EQ(sample["value"], 3.45);
    }
    if (sample["name"] == "wq:latency_seconds_count") {
      EXPECT_EQ(sample["value"], 5.0);
    }
  }
  EXPECT_EQ(buckets, (std::vector<double>{2, 3, 4, 5}));
}

TEST(MetricsTest, FormatsValuesShortestAndSpecialsAsPrometheusDoes) {
  MetricsRegistry registry;
  auto& family = registry.AddGauge("g", "G.", {"k"});
  family.WithLabels({"a"})->Set(0.1);
  family.WithLabels({"b"})->Set(1e-9);
  family.WithLabels({"c"})->Set(1.0 / 0.0);
  family.WithLabels({"d"})->Set(123456789);
  const std::string text = registry.Render();
  EXPECT_NE(text.find("g{k=\"a\"} 0.1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("g{k=\"b\"} 1e-09\n"), std::string::npos) << text;
  EXPECT_NE(text.find("g{k=\"c\"} +Inf\n"), std::string::npos) << text;
  EXPECT_NE(text.find("g{k=\"d\"} 123456789\n"), std::string::npos) << text;
  const nlohmann::json parsed = ParseWithPrometheusClient(text);
  ASSERT_TRUE(parsed.is_object());
  EXPECT_EQ(parsed["families"][0]["samples"][2]["value"], "+Inf");
}

TEST(MetricsTest, AddingAgainReturnsTheSameFamilyAndRemoveStopsExporting) {
  MetricsRegistry registry;
  auto& a = registry.AddGauge("wq:num_requests_running", "Running.", {"model_name"});
  auto& b = registry.AddGauge("wq:num_requests_running", "Running.", {"model_name"});
  EXPECT_EQ(&a, &b);
  std::shared_ptr<Gauge> kept = a.WithLabels({"m"});
  EXPECT_EQ(kept, b.WithLabels({"m"}));
  a.Remove({"m"});
  kept->Set(3);  // still safe to record through
  EXPECT_EQ(registry.Render().find("model_name=\"m\""), std::string::npos);
}

TEST(MetricsTest, ScrapedGaugeReadsItsCollectorsUntilTheyAreReleased) {
  MetricsRegistry registry;
  auto& jobs = registry.AddScrapedGauge("wq:quantize_jobs", "Jobs by state.", {"state"});
  int running = 2;
  std::shared_ptr<void> handle = jobs.AddCollector([&](const ScrapedGaugeFamily::Emit& emit) {
    emit({"RUNNING"}, running);
    emit({"QUEUED"}, 0);
  });
  running = 3;
  std::string text = registry.Render();
  EXPECT_NE(text.find("wq:quantize_jobs{state=\"RUNNING\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("wq:quantize_jobs{state=\"QUEUED\"} 0\n"), std::string::npos) << text;
  handle.reset();
  text = registry.Render();
  EXPECT_EQ(text.find("state="), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE wq:quantize_jobs gauge"), std::string::npos) << text;
}

// A job table's owner adds families while holding the lock its collector
// takes at scrape time; Abseil's deadlock detection aborts on a lock-order
// cycle, so this fails if rendering holds the registry's lock over collectors.
TEST(MetricsTest, OwnerMayAddFamiliesUnderTheLockItsCollectorTakes) {
  MetricsRegistry registry;
  absl::Mutex owner_mu;
  std::shared_ptr<void> handle =
      registry.AddScrapedGauge("wq:owned", "Owned.")
          .AddCollector([&](const ScrapedGaugeFamily::Emit& emit) {
            absl::MutexLock lock(&owner_mu);
            emit({}, 1);
          });
  EXPECT_NE(registry.Render().find("wq:owned 1\n"), std::string::npos);
  {
    absl::MutexLock lock(&owner_mu);
    registry.AddCounter("wq:added_total", "Added.").WithLabels({})->Inc();
  }
  EXPECT_NE(registry.Render().find("wq:added_total 1\n"), std::string::npos);
}

TEST(MetricsDeathTest, NamesAndLabelsAreChecked) {
  MetricsRegistry registry;
  EXPECT_DEATH(registry.AddCounter("wq:bad name", "x"), "invalid metric name");
  EXPECT_DEATH(registry.AddCounter("1abc", "x"), "invalid metric name");
  EXPECT_DEATH(registry.AddCounter("ok", "x", {"bad:label"}), "invalid label name");
  EXPECT_DEATH(registry.AddCounter("ok", "x", {"__reserved"}), "invalid label name");
  EXPECT_DEATH(registry.AddHistogram("h", "x", {"le"}, {1}), "cannot have a label");
  EXPECT_DEATH(registry.AddHistogram("h", "x", {}, {1, 1}), "ascending");
  registry.AddCounter("c_total", "x", {"a"});
  EXPECT_DEATH(registry.AddGauge("c_total", "x", {"a"}), "already a counter");
  EXPECT_DEATH(registry.AddCounter("c_total", "x", {"b"}), "already a counter");
  EXPECT_DEATH(registry.AddCounter("c_total", "x", {"a"}).WithLabels({}), "but 0 values");
}

TEST(MetricsTest, ConcurrentRecordingLosesNothing) {
  MetricsRegistry registry;
  auto& counters = registry.AddCounter("wq:tokens_total", "Tokens.", {"model_name"});
  auto& histograms =
      registry.AddHistogram("wq:itl_seconds", "ITL.", {"model_name"}, {0.001, 0.01, 0.1});
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Half the threads look the series up every time (the family lock),
      // half keep it (lock-free), while another renders.
      std::shared_ptr<Counter> counter = counters.WithLabels({"m"});
      std::shared_ptr<Histogram> histogram = histograms.WithLabels({"m"});
      for (int i = 0; i < kPerThread; ++i) {
        if (t % 2 == 0) {
          counters.WithLabels({"m"})->Inc();
        } else {
          counter->Inc();
        }
        histogram->Observe((i % 4) * 0.005);  // 0, 0.005, 0.01, 0.015
      }
    });
  }
  std::thread scraper([&] {
    for (int i = 0; i < 50; ++i) EXPECT_FALSE(registry.Render().empty());
  });
  for (auto& thread : threads) thread.join();
  scraper.join();
  EXPECT_EQ(counters.WithLabels({"m"})->Value(), kThreads * kPerThread);
  const Histogram::Snapshot snapshot = histograms.WithLabels({"m"})->Read();
  constexpr uint64_t kTotal = kThreads * kPerThread;
  EXPECT_EQ(snapshot.cumulative, (std::vector<uint64_t>{kTotal / 4, kTotal * 3 / 4,
                                                        kTotal, kTotal}));
  EXPECT_NEAR(snapshot.sum, kTotal / 4 * (0.005 + 0.01 + 0.015), 1e-6);
}

}  // namespace
}  // namespace wq

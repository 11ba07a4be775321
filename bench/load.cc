// Load and soak bench for a running inference_service (gRPC): --streams
// concurrent GenerateStream clients and --unary concurrent Generate clients
// send greedy requests for --duration_s, cancelling a random --cancel_fraction
// of streams midway. More clients than the server's max_running+max_queued
// drive it past capacity: RESOURCE_EXHAUSTED is expected and counted apart.
// Reports throughput, p50/p99 time to first token and inter-token latency,
// errors by status code, the server's RSS (from /proc/<pid>/status) at start,
// end and peak, and whether every completed greedy output equals the one a
// single client got first. Prints a table and writes JSON.
//
//   bench/load_run --duration_s=150 --streams=64     (starts a server itself)
//   bazel-bin/bench/load --target=127.0.0.1:PORT --server_pid=PID ...
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "wq/v1/inference.grpc.pb.h"

ABSL_FLAG(std::string, target, "", "host:port of the inference_service (required)");
ABSL_FLAG(int, server_pid, 0, "the server's pid, for its RSS; 0: not measured");
ABSL_FLAG(std::string, model, "stories260K", "model to generate with (loaded)");
ABSL_FLAG(int, streams, 64, "concurrent streaming clients");
ABSL_FLAG(int, unary, 4, "concurrent unary (Generate) clients");
ABSL_FLAG(int, duration_s, 150, "seconds of load");
ABSL_FLAG(double, cancel_fraction, 0.1, "share of streams cancelled after a random token");
ABSL_FLAG(int, max_new_tokens, 48, "tokens per request");
ABSL_FLAG(int, warmup_s, 15, "RSS growth is measured from this many seconds into the load");
ABSL_FLAG(int, deadline_s, 60, "client deadline of each request");
ABSL_FLAG(std::string, json_out, "", "write the results here as JSON");
ABSL_FLAG(std::string, note, "", "free text stored in the JSON (e.g. machine load)");

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = wq::v1;

const std::vector<std::string> kPrompts = {
    "Once upon a time",
    "The little dog",
    "Lily wanted to play",
    "One day, a big red ball",
    "Tom and his mom went to the park",
    "There was a tiny bird who",
    "The sun was shining and",
    "Sam found a box",
};

int64_t ServerRssKib(int pid) {
  if (pid <= 0) return -1;
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

v1::SamplingParams Greedy() {
  v1::SamplingParams s;
  s.set_temperature(0);
  s.set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  return s;
}

// What every client thread records; merged at the end.
struct Tally {
  std::vector<double> ttft_ms, inter_token_ms, unary_ms;
  std::map<std::string, int64_t> status_counts;  // "stream OK", "unary RESOURCE_EXHAUSTED", ...
  int64_t tokens = 0, completed = 0, cancelled = 0, greedy_checked = 0, greedy_mismatches = 0;

  void Merge(const Tally& o) {
    ttft_ms.insert(ttft_ms.end(), o.ttft_ms.begin(), o.ttft_ms.end());
    inter_token_ms.insert(inter_token_ms.end(), o.inter_token_ms.begin(), o.inter_token_ms.end());
    unary_ms.insert(unary_ms.end(), o.unary_ms.begin(), o.unary_ms.end());
    for (const auto& [k, n] : o.status_counts) status_counts[k] += n;
    tokens += o.tokens;
    completed += o.completed;
    cancelled += o.cancelled;
    greedy_checked += o.greedy_checked;
    greedy_mismatches += o.greedy_mismatches;
  }
};

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::UNKNOWN: return "UNKNOWN";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::INTERNAL: return "INTERNAL";
    default: return "OTHER";
  }
}

// Greedy outputs of one client alone, before the load starts.
std::vector<std::string> SoloOutputs(v1::InferenceService::Stub& stub) {
  std::vector<std::string> texts;
  for (const std::string& prompt : kPrompts) {
    v1::GenerateRequest request;
    request.set_model(absl::GetFlag(FLAGS_model));
    request.add_prompts(prompt);
    *request.mutable_sampling() = Greedy();
    v1::GenerateResponse response;
    grpc::ClientContext context;
    const grpc::Status status = stub.Generate(&context, request, &response);
    if (!status.ok() || response.results_size() != 1) {
      std::fprintf(stderr, "solo Generate failed: %s\n", status.error_message().c_str());
      std::exit(1);
    }
    texts.push_back(response.results(0).text());
  }
  return texts;
}

// A failed request is retried after a short pause, so clients refused for
// capacity do not spin.
void Backoff(const grpc::Status& status) {
  if (!status.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

void StreamClient(v1::InferenceService::Stub& stub, const std::vector<std::string>& solo,
                  Clock::time_point end, unsigned seed, Tally* tally) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> unit(0, 1);
  const int max_new = absl::GetFlag(FLAGS_max_new_tokens);
  while (Clock::now() < end) {
    const size_t p = rng() % kPrompts.size();
    const int cancel_after =
        unit(rng) < absl::GetFlag(FLAGS_cancel_fraction) ? 1 + static_cast<int>(rng() % max_new) : -1;
    v1::GenerateStreamRequest request;
    request.set_model(absl::GetFlag(FLAGS_model));
    request.set_prompt(kPrompts[p]);
    *request.mutable_sampling() = Greedy();
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(absl::GetFlag(FLAGS_deadline_s)));
    const Clock::time_point start = Clock::now();
    Clock::time_point last = start;
    auto reader = stub.GenerateStream(&context, request);
    v1::GenerateStreamResponse event;
    int tokens = 0;
    std::string text;
    bool ended = false, cancelled = false;
    while (reader->Read(&event)) {
      if (event.has_token()) {
        const Clock::time_point now = Clock::now();
        (tokens == 0 ? tally->ttft_ms : tally->inter_token_ms).push_back(Ms(now - last));
        last = now;
        ++tokens;
        if (tokens == cancel_after) {
          context.TryCancel();
          cancelled = true;
        }
      } else if (event.has_end()) {
        ended = true;
        text = event.end().text();
      }
    }
    const grpc::Status status = reader->Finish();
    tally->tokens += tokens;
    ++tally->status_counts[absl::StrCat("stream ", CodeName(status.error_code()))];
    if (cancelled) ++tally->cancelled;
    if (status.ok() && ended) {
      ++tally->completed;
      ++tally->greedy_checked;
      if (text != solo[p]) ++tally->greedy_mismatches;
    }
    Backoff(status);
  }
}

void UnaryClient(v1::InferenceService::Stub& stub, const std::vector<std::string>& solo,
                 Clock::time_point end, unsigned seed, Tally* tally) {
  std::mt19937 rng(seed);
  while (Clock::now() < end) {
    const size_t p = rng() % kPrompts.size();
    v1::GenerateRequest request;
    request.set_model(absl::GetFlag(FLAGS_model));
    request.add_prompts(kPrompts[p]);
    *request.mutable_sampling() = Greedy();
    v1::GenerateResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(absl::GetFlag(FLAGS_deadline_s)));
    const Clock::time_point start = Clock::now();
    const grpc::Status status = stub.Generate(&context, request, &response);
    ++tally->status_counts[absl::StrCat("unary ", CodeName(status.error_code()))];
    if (status.ok() && response.results_size() == 1) {
      tally->unary_ms.push_back(Ms(Clock::now() - start));
      tally->tokens += response.results(0).usage().completion_tokens();
      ++tally->completed;
      ++tally->greedy_checked;
      if (response.results(0).text() != solo[p]) ++tally->greedy_mismatches;
    }
    Backoff(status);
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string target = absl::GetFlag(FLAGS_target);
  if (target.empty()) {
    std::fprintf(stderr, "--target is required\n");
    return 2;
  }
  grpc::ChannelArguments args;
  // Separate connections per client spread the load as independent clients'
  // would; one shared HTTP/2 connection would serialize them in one socket.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub_for = [&](int i) {
    grpc::ChannelArguments a = args;
    a.SetInt("wq.load.client", i);  // distinct args: a channel of its own
    return v1::InferenceService::NewStub(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), a));
  };
  auto solo_stub = stub_for(-1);
  const std::vector<std::string> solo = SoloOutputs(*solo_stub);
  const int pid = absl::GetFlag(FLAGS_server_pid);
  const int64_t rss_start = ServerRssKib(pid);

  const int streams = absl::GetFlag(FLAGS_streams), unary = absl::GetFlag(FLAGS_unary);
  const Clock::time_point start = Clock::now();
  const Clock::time_point end = start + std::chrono::seconds(absl::GetFlag(FLAGS_duration_s));
  std::vector<Tally> tallies(streams + unary);
  std::vector<std::unique_ptr<v1::InferenceService::Stub>> stubs;
  std::vector<std::thread> threads;
  for (int i = 0; i < streams + unary; ++i) stubs.push_back(stub_for(i));
  for (int i = 0; i < streams + unary; ++i) {
    threads.emplace_back([&, i] {
      (i < streams ? StreamClient : UnaryClient)(*stubs[i], solo, end, 1234 + i, &tallies[i]);
    });
  }
  int64_t rss_peak = rss_start, rss_warm = -1;
  std::vector<std::pair<double, int64_t>> rss_samples;
  const Clock::time_point warm = start + std::chrono::seconds(absl::GetFlag(FLAGS_warmup_s));
  while (Clock::now() < end) {
    std::this_thread::sleep_until(std::min(end, Clock::now() + std::chrono::seconds(5)));
    const int64_t rss = ServerRssKib(pid);
    rss_peak = std::max(rss_peak, rss);
    rss_samples.emplace_back(Ms(Clock::now() - start) / 1000, rss);
    if (rss_warm < 0 && Clock::now() >= warm) rss_warm = rss;
  }
  for (std::thread& t : threads) t.join();
  const double seconds = Ms(Clock::now() - start) / 1000;
  const int64_t rss_end = ServerRssKib(pid);

  Tally all;
  for (const Tally& t : tallies) all.Merge(t);
  int64_t unexpected_errors = 0;
  for (const auto& [key, n] : all.status_counts) {
    const bool expected = key.find(" OK") != std::string::npos ||
                          key.find("RESOURCE_EXHAUSTED") != std::string::npos ||
                          key == "stream CANCELLED";
    if (!expected) unexpected_errors += n;
  }
  nlohmann::ordered_json json = {
      {"target", target},
      {"model", absl::GetFlag(FLAGS_model)},
      {"streams", streams},
      {"unary_clients", unary},
      {"duration_s", seconds},
      {"cancel_fraction", absl::GetFlag(FLAGS_cancel_fraction)},
      {"max_new_tokens", absl::GetFlag(FLAGS_max_new_tokens)},
      {"completed_requests", all.completed},
      {"cancelled_streams", all.cancelled},
      {"requests_per_s", all.completed / seconds},
      {"tokens_per_s", all.tokens / seconds},
      {"ttft_ms", {{"p50", Percentile(all.ttft_ms, 0.5)}, {"p99", Percentile(all.ttft_ms, 0.99)},
                   {"count", all.ttft_ms.size()}}},
      {"inter_token_ms", {{"p50", Percentile(all.inter_token_ms, 0.5)},
                          {"p99", Percentile(all.inter_token_ms, 0.99)},
                          {"count", all.inter_token_ms.size()}}},
      {"unary_latency_ms", {{"p50", Percentile(all.unary_ms, 0.5)},
                            {"p99", Percentile(all.unary_ms, 0.99)}}},
      {"status_counts", all.status_counts},
      {"unexpected_errors", unexpected_errors},
      {"greedy_checked", all.greedy_checked},
      {"greedy_mismatches", all.greedy_mismatches},
      {"server_rss_kib", {{"start", rss_start}, {"after_warmup", rss_warm}, {"end", rss_end},
                          {"peak", rss_peak},
                          {"growth_after_warmup_percent",
                           rss_warm > 0 ? 100.0 * (rss_end - rss_warm) / rss_warm : 0.0},
                          {"samples_s_kib", rss_samples}}},
      {"note", absl::GetFlag(FLAGS_note)},
  };
  std::printf("%-28s %s\n", "metric", "value");
  for (const char* key : {"duration_s", "streams", "unary_clients", "completed_requests",
                          "cancelled_streams", "requests_per_s", "tokens_per_s"}) {
    std::printf("%-28s %s\n", key, json[key].dump().c_str());
  }
  std::printf("%-28s p50 %.2f  p99 %.2f\n", "ttft_ms", json["ttft_ms"]["p50"].get<double>(),
              json["ttft_ms"]["p99"].get<double>());
  std::printf("%-28s p50 %.2f  p99 %.2f\n", "inter_token_ms",
              json["inter_token_ms"]["p50"].get<double>(), json["inter_token_ms"]["p99"].get<double>());
  std::printf("%-28s p50 %.2f  p99 %.2f\n", "unary_latency_ms",
              json["unary_latency_ms"]["p50"].get<double>(),
              json["unary_latency_ms"]["p99"].get<double>());
  for (const auto& [key, n] : all.status_counts) std::printf("  %-26s %lld\n", key.c_str(), static_cast<long long>(n));
  std::printf("%-28s %lld\n", "unexpected_errors", static_cast<long long>(unexpected_errors));
  std::printf("%-28s %lld of %lld\n", "greedy_mismatches", static_cast<long long>(all.greedy_mismatches),
              static_cast<long long>(all.greedy_checked));
  std::printf("%-28s start %lld  after warm-up %lld  end %lld  peak %lld (%+.1f%% after warm-up)\n",
              "server_rss_kib", static_cast<long long>(rss_start), static_cast<long long>(rss_warm),
              static_cast<long long>(rss_end), static_cast<long long>(rss_peak),
              json["server_rss_kib"]["growth_after_warmup_percent"].get<double>());
  if (const std::string out = absl::GetFlag(FLAGS_json_out); !out.empty()) {
    std::ofstream(out) << json.dump(2) << "\n";
  }
  return unexpected_errors == 0 && all.greedy_mismatches == 0 ? 0 : 1;
}

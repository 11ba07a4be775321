// Shared by e2e_metrics_{inference,quantizer}_test.cc: a real server binary
// with its HTTP listener, /metrics scrapes and the server's request log lines.
#ifndef WQ_TESTS_E2E_METRICS_SUPPORT_H_
#define WQ_TESTS_E2E_METRICS_SUPPORT_H_

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e_support.h"
#include "tests/prometheus_parser.h"

namespace wq::e2e {

inline std::string Runfiles() { return std::string(std::getenv("TEST_SRCDIR")) + "/wq"; }

// A fresh directory with a writable copy of stories260K under models/.
inline std::string ScratchDirWithStories(const std::string& name) {
  const std::string dir = std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
  std::filesystem::create_directories(dir + "/models");
  std::filesystem::copy(Runfiles() + "/testdata/models/stories260K", dir + "/models/stories260K",
                        std::filesystem::copy_options::recursive);
  return dir;
}

// A server on 127.0.0.1 with gRPC and HTTP listeners on free ports.
struct MetricsServer {
  MetricsServer(const std::string& name, const std::string& binary,
                std::vector<std::string> args, const std::string& dir) {
    const std::string http_port_file = dir + "/" + name + ".http_port";
    args.push_back("--http_listen=127.0.0.1:0");
    args.push_back("--http_port_file=" + http_port_file);
    process = std::make_unique<ServerProcess>(name, binary, std::move(args), dir);
    const int port = process->WaitForPort(std::chrono::seconds(30));
    address = "127.0.0.1:" + std::to_string(port);
    // Written before the gRPC port file.
    std::ifstream(http_port_file) >> http_port;
  }

  std::shared_ptr<grpc::Channel> Channel() const {
    return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  }

  std::unique_ptr<ServerProcess> process;
  std::string address;
  int http_port = 0;
};

inline void SetDeadline(grpc::ClientContext* context, int seconds = 60) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

// The x-request-id the server sent back: initial metadata, or the trailing
// metadata of a failed call.
inline std::string ReturnedRequestId(const grpc::ClientContext& context) {
  for (const auto* metadata :
       {&context.GetServerInitialMetadata(), &context.GetServerTrailingMetadata()}) {
    auto it = metadata->find("x-request-id");
    if (it != metadata->end()) return std::string(it->second.data(), it->second.size());
  }
  return "";
}

struct Scrape {
  int status = 0;
  std::string content_type, request_id, text;
  nlohmann::json parsed;  // prometheus_client's reading
};

// GET /metrics with x-request-id `request_id`, read by the reference parser.
inline Scrape ScrapeMetrics(httplib::Client& client, const std::string& request_id) {
  Scrape scrape;
  httplib::Result result = client.Get("/metrics", {{"x-request-id", request_id}});
  if (!result) {
    ADD_FAILURE() << "GET /metrics failed: " << httplib::to_string(result.error());
    return scrape;
  }
  scrape.status = result->status;
  scrape.content_type = result->get_header_value("Content-Type");
  scrape.request_id = result->get_header_value("x-request-id");
  scrape.text = result->body;
  scrape.parsed = ParseWithPrometheusClient(result->body);
  return scrape;
}

// The value of one sample, 0 when absent (a series not yet recorded).
inline double Value(const Scrape& scrape, const std::string& name,
                    const std::map<std::string, std::string>& labels = {}) {
  return SampleValue(scrape.parsed, name, labels).value_or(0);
}

// Checks a histogram series: cumulative buckets never decrease and +Inf
// equals _count.
inline void ExpectConsistentHistogram(const Scrape& scrape, const std::string& name,
                                      std::map<std::string, std::string> labels) {
  double previous = 0;
  bool saw_inf = false;
  for (const nlohmann::json& family : scrape.parsed["families"]) {
    for (const nlohmann::json& sample : family["samples"]) {
      if (sample["name"] != name + "_bucket") continue;
      auto sample_labels = sample["labels"].get<std::map<std::string, std::string>>();
      const std::string le = sample_labels["le"];
      sample_labels.erase("le");
      if (sample_labels != labels) continue;
      const double value = sample["value"];
      EXPECT_GE(value, previous) << name << " le=" << le;
      previous = value;
      if (le == "+Inf") saw_inf = true;
    }
  }
  EXPECT_TRUE(saw_inf) << name;
  EXPECT_EQ(previous, Value(scrape, name + "_count", labels)) << name;
}

// The server's "request" log lines; of one protocol ("grpc", "http") unless
// empty.
inline std::vector<nlohmann::json> RequestLogLines(const ServerProcess& server,
                                                   const std::string& protocol = "") {
  std::vector<nlohmann::json> lines;
  std::istringstream log(server.Log());
  for (std::string line; std::getline(log, line);) {
    nlohmann::json parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_object() && parsed.value("event", "") == "request" &&
        (protocol.empty() || parsed.value("protocol", "") == protocol)) {
      lines.push_back(parsed);
    }
  }
  return lines;
}

// The log lines with this request id.
inline std::vector<nlohmann::json> LinesWithId(const std::vector<nlohmann::json>& lines,
                                               const std::string& request_id) {
  std::vector<nlohmann::json> found;
  for (const nlohmann::json& line : lines) {
    if (line.value("request_id", "") == request_id) found.push_back(line);
  }
  return found;
}

}  // namespace wq::e2e

#endif  // WQ_TESTS_E2E_METRICS_SUPPORT_H_

// The quantizer service's /metrics, request ids and log lines over a real
// server: a job that succeeds, one that fails at run time (truncated weights)
// and a submission rejected up front.
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "gtest/gtest.h"
#include "tests/e2e_metrics_support.h"
#include "wq/v1/quantizer.grpc.pb.h"

namespace wq::e2e {
namespace {

constexpr char kSubmitJob[] = "/wq.v1.QuantizerService/SubmitJob";
constexpr char kWatchJob[] = "/wq.v1.QuantizerService/WatchJob";

// Submits with `request_id` and watches the job to its end, calling
// `on_running` with each snapshot that says RUNNING; its final state.
v1::JobState SubmitAndWatch(v1::QuantizerService::Stub& stub, const std::string& model_id,
                            const std::string& request_id,
                            const std::function<void(const v1::Job&)>& on_running = nullptr) {
  v1::SubmitJobRequest request;
  request.set_model_id(model_id);
  request.mutable_config()->set_weight_dtype(v1::INT4_CLIP);
  request.mutable_config()->set_scheme(v1::SYM);
  request.mutable_config()->set_group_size(32);
  request.mutable_config()->set_algorithm(v1::RTN);
  v1::Job job;
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    context.AddMetadata("x-request-id", request_id);
    grpc::Status status = stub.SubmitJob(&context, request, &job);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(ReturnedRequestId(context), request_id);
  }
  grpc::ClientContext context;
  SetDeadline(&context, 120);
  v1::WatchJobRequest watch;
  watch.set_job_id(job.job_id());
  auto reader = stub.WatchJob(&context, watch);
  v1::Job snapshot;
  while (reader->Read(&snapshot)) {
    job = snapshot;
    if (on_running && job.state() == v1::JOB_STATE_RUNNING) on_running(job);
  }
  EXPECT_TRUE(reader->Finish().ok());
  return job.state();
}

// Scrapes; checks that the running job is the only one with a phase sample
// (1, a JobPhase name); how many it had.
int PhaseSamples(httplib::Client& http, const v1::Job& job) {
  const Scrape scrape = ScrapeMetrics(http, "scrape-running");
  int samples = 0;
  for (const nlohmann::json& family : scrape.parsed["families"]) {
    if (family["name"] != "wq:quantize_job_phase") continue;
    for (const nlohmann::json& sample : family["samples"]) {
      EXPECT_EQ(sample["labels"]["job_id"], job.job_id());
      EXPECT_EQ(sample["labels"]["model_id"], "stories260K");
      v1::JobPhase phase;
      EXPECT_TRUE(v1::JobPhase_Parse(sample["labels"]["phase"].get<std::string>(), &phase))
          << sample;
      EXPECT_EQ(sample["value"], 1.0);
      ++samples;
    }
  }
  return samples;
}

TEST(E2eMetricsTest, QuantizerCountsJobsByStateAndLogsFailuresAsErrors) {
  const std::string dir = ScratchDirWithStories("quantizer");
  // A model whose weights end early: accepted, then failed by the worker.
  std::filesystem::copy(dir + "/models/stories260K", dir + "/models/truncated",
                        std::filesystem::copy_options::recursive);
  std::filesystem::resize_file(dir + "/models/truncated/model.safetensors", 4096);
  MetricsServer server("quantizer", Runfiles() + "/quantizer_service/quantizer_service",
                       {"--model_root=" + dir + "/models", "--artifact_root=" + dir + "/artifacts",
                        "--threads=1", "--workers=1"},
                       dir);
  ASSERT_GT(server.http_port, 0);
  auto stub = v1::QuantizerService::NewStub(server.Channel());
  httplib::Client http("127.0.0.1", server.http_port);

  // While the job runs (each phase takes milliseconds, a scrape less), a
  // scrape after a RUNNING snapshot finds it with its phase.
  int phase_samples = 0;
  EXPECT_EQ(SubmitAndWatch(*stub, "stories260K", "submit-ok",
                           [&](const v1::Job& job) { phase_samples += PhaseSamples(http, job); }),
            v1::JOB_STATE_SUCCEEDED);
  EXPECT_GE(phase_samples, 1);
  EXPECT_EQ(SubmitAndWatch(*stub, "truncated", "submit-truncated"), v1::JOB_STATE_FAILED);
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    context.AddMetadata("x-request-id", "submit-unknown");
    v1::SubmitJobRequest request;
    request.set_model_id("nope");
    v1::Job job;
    EXPECT_EQ(stub->SubmitJob(&context, request, &job).error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(ReturnedRequestId(context), "submit-unknown");
  }

  const Scrape scrape = ScrapeMetrics(http, "scrape-quantizer");
  ASSERT_TRUE(scrape.parsed.is_object()) << scrape.text;
  EXPECT_EQ(scrape.request_id, "scrape-quantizer");
  EXPECT_EQ(Value(scrape, "wq:quantize_jobs", {{"state", "JOB_STATE_SUCCEEDED"}}), 1);
  EXPECT_EQ(Value(scrape, "wq:quantize_jobs", {{"state", "JOB_STATE_FAILED"}}), 1);
  EXPECT_EQ(Value(scrape, "wq:quantize_jobs", {{"state", "JOB_STATE_RUNNING"}}), 0);
  EXPECT_EQ(Value(scrape, "wq:quantize_jobs", {{"state", "JOB_STATE_QUEUED"}}), 0);
  // Nothing runs, so no job reports a phase.
  EXPECT_EQ(scrape.text.find("wq:quantize_job_phase{"), std::string::npos) << scrape.text;
  EXPECT_EQ(Value(scrape, "wq:quantize_job_duration_seconds_count",
                  {{"state", "JOB_STATE_SUCCEEDED"}}),
            1);
  EXPECT_EQ(
      Value(scrape, "wq:quantize_job_duration_seconds_count", {{"state", "JOB_STATE_FAILED"}}),
      1);
  ExpectConsistentHistogram(scrape, "wq:quantize_job_duration_seconds",
                            {{"state", "JOB_STATE_SUCCEEDED"}});
  auto requests = [&](const std::string& method, const std::string& code) {
    return Value(scrape, "wq:requests_total", {{"method", method}, {"code", code}});
  };
  EXPECT_EQ(requests(kSubmitJob, "OK"), 2);
  EXPECT_EQ(requests(kSubmitJob, "NOT_FOUND"), 1);
  EXPECT_EQ(requests(kWatchJob, "OK"), 2);

  const std::vector<nlohmann::json> lines = RequestLogLines(*server.process, "grpc");
  EXPECT_EQ(lines.size(), 5u) << server.process->Log();  // 3 SubmitJob, 2 WatchJob
  const std::vector<nlohmann::json> submitted = LinesWithId(lines, "submit-ok");
  ASSERT_EQ(submitted.size(), 1u);
  EXPECT_EQ(submitted[0]["method"], kSubmitJob);
  EXPECT_EQ(submitted[0]["code"], "OK");
  const std::vector<nlohmann::json> unknown = LinesWithId(lines, "submit-unknown");
  ASSERT_EQ(unknown.size(), 1u);
  EXPECT_EQ(unknown[0]["code"], "NOT_FOUND");

  // The failed job's end logs at level error, the successful one's at info.
  int failed_errors = 0, succeeded_infos = 0;
  std::istringstream log(server.process->Log());
  for (std::string text; std::getline(log, text);) {
    const nlohmann::json line = nlohmann::json::parse(text, nullptr, false);
    if (!line.is_object() || line.value("event", "") != "job_finished") continue;
    if (line["state"] == "JOB_STATE_FAILED" && line["level"] == "error") ++failed_errors;
    if (line["state"] == "JOB_STATE_SUCCEEDED" && line["level"] == "info") ++succeeded_infos;
  }
  EXPECT_EQ(failed_errors, 1) << server.process->Log();
  EXPECT_EQ(succeeded_infos, 1);

  EXPECT_EQ(server.process->Stop(std::chrono::seconds(10)), 0);
}

}  // namespace
}  // namespace wq::e2e

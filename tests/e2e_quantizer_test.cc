// End-to-end tests of wq.v1.QuantizerService (servers: e2e_test.cc).
#include <algorithm>
#include <chrono>
#include <memory>
#include <set>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "wq/v1/quantizer.grpc.pb.h"
#include "tests/e2e_support.h"

namespace wq::e2e {
namespace {

std::unique_ptr<v1::QuantizerService::Stub> Stub() {
  return v1::QuantizerService::NewStub(
      grpc::CreateChannel(GetServers().quantizer, grpc::InsecureChannelCredentials()));
}

void SetDeadline(grpc::ClientContext* context, int seconds = 30) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

v1::SubmitJobRequest Int4Request(int group_size = 32) {
  v1::SubmitJobRequest request;
  request.set_model_id("stories260K");
  request.mutable_config()->set_weight_dtype(v1::INT4_CLIP);
  request.mutable_config()->set_scheme(v1::SYM);
  request.mutable_config()->set_group_size(group_size);
  request.mutable_config()->set_algorithm(v1::RTN);
  return request;
}

struct WatchOutcome {
  v1::Job final_job;
  std::set<int> phases;
  bool percent_monotone = true;
  int snapshots = 0;
};

WatchOutcome SubmitAndWatch(const v1::SubmitJobRequest& request) {
  WatchOutcome outcome;
  auto stub = Stub();
  v1::Job job;
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    grpc::Status status = stub->SubmitJob(&context, request, &job);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (!status.ok()) return outcome;
  }
  EXPECT_FALSE(job.job_id().empty());
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  grpc::ClientContext context;
  SetDeadline(&context, 120);
  v1::WatchJobRequest watch;
  watch.set_job_id(job.job_id());
  auto reader = stub->WatchJob(&context, watch);
  double last_percent = -1;
  v1::Job snapshot;
  while (reader->Read(&snapshot)) {
    ++outcome.snapshots;
    outcome.phases.insert(snapshot.progress().phase());
    if (snapshot.progress().percent() < last_percent) outcome.percent_monotone = false;
    last_percent = snapshot.progress().percent();
    outcome.final_job = snapshot;
  }
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  return outcome;
}

grpc::StatusCode SubmitCode(const v1::SubmitJobRequest& request, std::string* message) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::Job job;
  grpc::Status status = Stub()->SubmitJob(&context, request, &job);
  *message = status.error_message();
  return status.error_code();
}

TEST(E2eQuantizerTest, QuantizeStories260KInt4) {
  // Group size 64, which no other test asks for, so this job really runs
  // rather than reusing an artifact another test made.
  WatchOutcome outcome = SubmitAndWatch(Int4Request(64));
  const v1::Job& job = outcome.final_job;
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error_message();
  EXPECT_TRUE(outcome.percent_monotone);
  EXPECT_GE(outcome.snapshots, 2);
  // Snapshots coalesce on a fast job; every phase change is in the log.
  EXPECT_TRUE(std::any_of(job.log().begin(), job.log().end(), [](const std::string& line) {
    return absl::StartsWith(line, "PHASE_QUANTIZING");
  })) << absl::StrJoin(job.log(), "\n");
  EXPECT_TRUE(outcome.phases.count(v1::PHASE_DONE));
  EXPECT_DOUBLE_EQ(job.progress().percent(), 100);
  EXPECT_FALSE(job.artifact_id().empty());
  EXPECT_GT(job.peak_memory_bytes(), 0);
  EXPECT_TRUE(job.has_end_time());

  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ListArtifactsResponse artifacts;
  ASSERT_TRUE(Stub()->ListArtifacts(&context, v1::ListArtifactsRequest(), &artifacts).ok());
  bool found = false;
  for (const v1::Artifact& a : artifacts.artifacts()) {
    if (a.artifact_id() != job.artifact_id()) continue;
    found = true;
    EXPECT_GE(a.bits_per_weight(), 4.0);
    EXPECT_LE(a.bits_per_weight(), 6.0);
    EXPECT_GT(a.size_bytes(), 0);
    EXPECT_EQ(a.source_model_id(), "stories260K");
    EXPECT_EQ(a.config().weight_dtype(), v1::INT4_CLIP);
    EXPECT_EQ(a.config().group_size(), 64);
    EXPECT_EQ(a.format_version(), 2);
    EXPECT_FALSE(a.manifest_sha256().empty());
  }
  EXPECT_TRUE(found) << job.artifact_id() << " missing from ListArtifacts";

  grpc::ClientContext get_context;
  SetDeadline(&get_context);
  v1::GetArtifactRequest get;
  get.set_artifact_id(job.artifact_id());
  v1::Artifact artifact;
  EXPECT_TRUE(Stub()->GetArtifact(&get_context, get, &artifact).ok());
  EXPECT_EQ(artifact.artifact_id(), job.artifact_id());
}

TEST(E2eQuantizerTest, SubmitRejectsBadRequests) {
  std::string message;
  v1::SubmitJobRequest unknown = Int4Request();
  unknown.set_model_id("no-such-model");
  EXPECT_EQ(SubmitCode(unknown, &message), grpc::StatusCode::NOT_FOUND) << message;

  v1::SubmitJobRequest traversal = Int4Request();
  traversal.set_model_id("../etc");
  EXPECT_EQ(SubmitCode(traversal, &message), grpc::StatusCode::INVALID_ARGUMENT) << message;

  v1::SubmitJobRequest group0 = Int4Request();
  group0.mutable_config()->set_group_size(0);
  EXPECT_EQ(SubmitCode(group0, &message), grpc::StatusCode::INVALID_ARGUMENT) << message;
  EXPECT_NE(message.find("group_size"), std::string::npos) << message;

  v1::SubmitJobRequest nf4_asym = Int4Request();
  nf4_asym.mutable_config()->set_weight_dtype(v1::NF4);
  nf4_asym.mutable_config()->set_scheme(v1::ASYM);
  EXPECT_EQ(SubmitCode(nf4_asym, &message), grpc::StatusCode::INVALID_ARGUMENT) << message;
}

TEST(E2eQuantizerTest, UnknownJobIsNotFound) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::GetJobRequest request;
  request.set_job_id("job-nope");
  v1::Job job;
  EXPECT_EQ(Stub()->GetJob(&context, request, &job).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST(E2eQuantizerTest, CancelFinishedJobFails) {
  const std::string artifact = QuantizedArtifactId();  // ensures a finished job
  grpc::ClientContext list_context;
  SetDeadline(&list_context);
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(Stub()->ListJobs(&list_context, v1::ListJobsRequest(), &jobs).ok());
  ASSERT_GT(jobs.jobs_size(), 0);
  for (const v1::Job& job : jobs.jobs()) {
    if (job.state() != v1::JOB_STATE_SUCCEEDED) continue;
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::CancelJobRequest request;
    request.set_job_id(job.job_id());
    v1::Job out;
    EXPECT_EQ(Stub()->CancelJob(&context, request, &out).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
    break;
  }
}

}  // namespace

std::string QuantizedArtifactId() {
  static absl::Mutex mu(absl::kConstInit);
  static std::string* id = nullptr;
  absl::MutexLock lock(&mu);
  if (id == nullptr) {
    // Quantizing the same model and config again is a no-op on the server
    // (deterministic artifact ids), so test order does not matter.
    WatchOutcome outcome = SubmitAndWatch(Int4Request());
    EXPECT_EQ(outcome.final_job.state(), v1::JOB_STATE_SUCCEEDED) << outcome.final_job.error_message();
    id = new std::string(outcome.final_job.artifact_id());
  }
  return *id;
}

}  // namespace wq::e2e

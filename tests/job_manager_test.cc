// JobManager without gRPC: validation, running, cancellation, shutdown.
#include "quantizer_service/job_manager.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <string>

#include "absl/strings/str_join.h"

#include "gtest/gtest.h"

namespace wq {
namespace {

class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    std::string dir = std::string(tmp != nullptr ? tmp : "/tmp") + "/jobs.XXXXXX";
    ASSERT_NE(mkdtemp(dir.data()), nullptr);
    // Where the runfiles' symlinks lead, as for the data root below.
    options_.model_root =
        std::filesystem::canonical("testdata/models/stories260K/config.json").parent_path().parent_path();
    options_.artifact_root = dir + "/artifacts";
    // Where the runfiles' symlinks lead: calibration files must resolve
    // inside the data root.
    options_.data_root =
        std::filesystem::canonical("testdata/data/tinystories_train_head.txt").parent_path();
    options_.workers = 1;
  }

  std::unique_ptr<JobManager> Make() {
    auto manager = JobManager::Create(options_);
    EXPECT_TRUE(manager.ok()) << manager.status();
    return manager.ok() ? *std::move(manager) : nullptr;
  }

  static v1::SubmitJobRequest Request(v1::WeightDtype dtype = v1::INT4_CLIP) {
    v1::SubmitJobRequest request;
    request.set_model_id("stories260K");
    request.mutable_config()->set_weight_dtype(dtype);
    request.mutable_config()->set_group_size(32);
    return request;
  }

  // Watches to the end; the final snapshot.
  static v1::Job WaitForEnd(JobManager& jobs, const std::string& id) {
    v1::Job last;
    absl::Status status = jobs.WatchJob(
        id, [&](const v1::Job& job) { last = job; return true; }, [] { return false; });
    EXPECT_TRUE(status.ok()) << status;
    return last;
  }

  JobManager::Options options_;
};

TEST_F(JobManagerTest, SubmitValidatesAtOnce) {
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  v1::SubmitJobRequest request = Request();
  request.set_model_id("missing");
  EXPECT_EQ(jobs->SubmitJob(request).status().code(), absl::StatusCode::kNotFound);
  request.set_model_id("../etc");
  EXPECT_EQ(jobs->SubmitJob(request).status().code(), absl::StatusCode::kInvalidArgument);

  request = Request();
  request.mutable_config()->set_group_size(0);
  EXPECT_EQ(jobs->SubmitJob(request).status().code(), absl::StatusCode::kInvalidArgument);

  request = Request(v1::NF4);
  request.mutable_config()->set_scheme(v1::ASYM);
  EXPECT_EQ(jobs->SubmitJob(request).status().code(), absl::StatusCode::kInvalidArgument);

  request = Request();
  request.mutable_config()->mutable_calibration()->set_data_file("../secret.txt");
  EXPECT_EQ(jobs->SubmitJob(request).status().code(), absl::StatusCode::kInvalidArgument);
  request.mutable_config()->mutable_calibration()->set_data_file("missing.txt");
  EXPECT_EQ(jobs->SubmitJob(request).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(jobs->ListJobs().empty());
}

TEST_F(JobManagerTest, RunsToSuccessAndListsArtifact) {
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  absl::StatusOr<v1::Job> job = jobs->SubmitJob(Request());
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::JOB_STATE_QUEUED);
  v1::Job done = WaitForEnd(*jobs, job->job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error_message();
  EXPECT_EQ(done.progress().percent(), 100);
  EXPECT_GT(done.peak_memory_bytes(), 0);
  EXPECT_FALSE(done.log().empty());

  std::vector<v1::Artifact> artifacts = jobs->ListArtifacts();
  ASSERT_EQ(artifacts.size(), 1u);
  EXPECT_EQ(artifacts[0].artifact_id(), done.artifact_id());
  EXPECT_GT(artifacts[0].size_bytes(), 0);
  absl::StatusOr<v1::Artifact> artifact = jobs->GetArtifact(done.artifact_id());
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_EQ(artifact->manifest_sha256().size(), 64u);
  EXPECT_EQ(jobs->GetArtifact("nope").status().code(), absl::StatusCode::kNotFound);

  // Finished jobs cannot be cancelled.
  EXPECT_EQ(jobs->CancelJob(done.job_id()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(JobManagerTest, AwqJobReportsCalibrationAndSearchPhases) {
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  v1::SubmitJobRequest request = Request();
  request.mutable_config()->set_algorithm(v1::AWQ);
  EXPECT_EQ(jobs->SubmitJob(request).status().code(), absl::StatusCode::kInvalidArgument)
      << "AWQ without calibration data";
  v1::CalibrationConfig* calibration = request.mutable_config()->mutable_calibration();
  calibration->set_data_file("tinystories_train_head.txt");
  calibration->set_n_samples(8);
  calibration->set_seq_len(128);
  absl::StatusOr<v1::Job> job = jobs->SubmitJob(request);
  ASSERT_TRUE(job.ok()) << job.status();
  std::set<v1::JobPhase> phases;
  absl::Status status = jobs->WatchJob(
      job->job_id(),
      [&](const v1::Job& snapshot) {
        phases.insert(snapshot.progress().phase());
        if (snapshot.progress().phase() == v1::PHASE_GRID_SEARCH) {
          EXPECT_EQ(snapshot.progress().total_steps(), 5);
          EXPECT_NE(snapshot.progress().message().find(" of 5"), std::string::npos);
        }
        return true;
      },
      [] { return false; }, absl::Milliseconds(5));
  ASSERT_TRUE(status.ok()) << status;
  v1::Job done = *jobs->GetJob(job->job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error_message();
  const std::string log = absl::StrJoin(done.log(), "\n");
  for (const char* line : {"PHASE_CALIBRATION: calibration: 8 blocks x 128 tokens",
                           "PHASE_GRID_SEARCH: scale search block 1 of 5",
                           "PHASE_CLIP_SEARCH: clip search block 1 of 5", "awq block 4: "}) {
    EXPECT_NE(log.find(line), std::string::npos) << line << " missing from\n" << log;
  }
  EXPECT_TRUE(phases.count(v1::PHASE_DONE));
  EXPECT_GT(done.peak_memory_bytes(), 0);
}

TEST_F(JobManagerTest, CancelQueuedJobAtOnce) {
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  absl::StatusOr<v1::Job> first = jobs->SubmitJob(Request(v1::INT8));
  absl::StatusOr<v1::Job> second = jobs->SubmitJob(Request(v1::NF4));
  ASSERT_TRUE(first.ok() && second.ok());
  // One worker: the second job waits behind the first.
  absl::StatusOr<v1::Job> cancelled = jobs->CancelJob(second->job_id());
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(WaitForEnd(*jobs, second->job_id()).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(WaitForEnd(*jobs, first->job_id()).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(jobs->ListArtifacts().size(), 1u);
  EXPECT_EQ(jobs->CancelJob("job-none").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(JobManagerTest, CancelRunningJobLeavesNoArtifact) {
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  absl::StatusOr<v1::Job> job = jobs->SubmitJob(Request(v1::INT8));
  ASSERT_TRUE(job.ok());
  v1::Job last;
  bool cancel_sent = false;
  absl::Status status = jobs->WatchJob(
      job->job_id(),
      [&](const v1::Job& snapshot) {
        last = snapshot;
        if (snapshot.state() == v1::JOB_STATE_RUNNING && !cancel_sent) {
          cancel_sent = true;
          EXPECT_TRUE(jobs->CancelJob(snapshot.job_id()).ok());
        }
        return true;
      },
      [] { return false; });
  ASSERT_TRUE(status.ok()) << status;
  // The job may have passed its last cancellation point already.
  if (last.state() == v1::JOB_STATE_CANCELLED) {
    EXPECT_TRUE(jobs->ListArtifacts().empty());
  } else {
    EXPECT_EQ(last.state(), v1::JOB_STATE_SUCCEEDED);
  }
}

TEST_F(JobManagerTest, ShutdownCancelsQueuedJobsAndRefusesNewOnes) {
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  std::vector<std::string> ids;
  for (v1::WeightDtype dtype : {v1::INT8, v1::NF4, v1::FP4_E2M1}) {
    absl::StatusOr<v1::Job> job = jobs->SubmitJob(Request(dtype));
    ASSERT_TRUE(job.ok());
    ids.push_back(job->job_id());
  }
  jobs->Shutdown();
  for (const std::string& id : ids) {
    absl::StatusOr<v1::Job> job = jobs->GetJob(id);
    ASSERT_TRUE(job.ok());
    EXPECT_TRUE(IsTerminal(job->state())) << v1::JobState_Name(job->state());
  }
  EXPECT_EQ(jobs->GetJob(ids.back())->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(jobs->SubmitJob(Request()).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(JobManagerTest, WatchGivesUpWhenStopped) {
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  EXPECT_EQ(jobs->WatchJob("job-none", [](const v1::Job&) { return true; },
                           [] { return false; })
                .code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<v1::Job> job = jobs->SubmitJob(Request());
  ASSERT_TRUE(job.ok());
  int emitted = 0;
  absl::Status status = jobs->WatchJob(
      job->job_id(), [&](const v1::Job&) { return ++emitted < 1; }, [] { return false; });
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(emitted, 1);
  status = jobs->WatchJob(job->job_id(), [](const v1::Job&) { return true; },
                          [] { return true; }, absl::Milliseconds(10));
  EXPECT_TRUE(status.ok() || absl::IsCancelled(status)) << status;
}

}  // namespace
}  // namespace wq

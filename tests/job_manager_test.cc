// JobManager without gRPC: validation, running, cancellation, shutdown.
#include "quantizer_service/job_manager.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

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

  // Every job, following pages of `page_size`.
  static std::vector<v1::Job> AllJobs(const JobManager& jobs, int page_size = 0) {
    std::vector<v1::Job> all;
    v1::ListJobsRequest request;
    request.set_page_size(page_size);
    do {
      absl::StatusOr<v1::ListJobsResponse> page = jobs.ListJobs(request);
      EXPECT_TRUE(page.ok()) << page.status();
      if (!page.ok()) break;
      all.insert(all.end(), page->jobs().begin(), page->jobs().end());
      request.set_page_token(page->next_page_token());
    } while (!request.page_token().empty());
    return all;
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
  EXPECT_TRUE(AllJobs(*jobs).empty());
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

TEST_F(JobManagerTest, IdenticalSubmissionsJoinTheActiveJob) {
  // Enough workers to run all three at once: separate jobs would race to
  // publish the same artifact.
  options_.workers = 3;
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  absl::StatusOr<v1::Job> first = jobs->SubmitJob(Request());
  ASSERT_TRUE(first.ok()) << first.status();
  // Defaults spelled out resolve to the same config, hence the same artifact.
  v1::SubmitJobRequest explicit_defaults = Request();
  explicit_defaults.mutable_config()->set_algorithm(v1::RTN);
  for (const v1::SubmitJobRequest& request : {Request(), explicit_defaults}) {
    absl::StatusOr<v1::Job> same = jobs->SubmitJob(request);
    ASSERT_TRUE(same.ok()) << same.status();
    EXPECT_EQ(same->job_id(), first->job_id());
  }
  v1::Job done = WaitForEnd(*jobs, first->job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error_message();
  EXPECT_EQ(AllJobs(*jobs).size(), 1u);

  // Once it has ended, the same request is a new job reusing the artifact.
  absl::StatusOr<v1::Job> again = jobs->SubmitJob(Request());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NE(again->job_id(), first->job_id());
  v1::Job again_done = WaitForEnd(*jobs, again->job_id());
  EXPECT_EQ(again_done.state(), v1::JOB_STATE_SUCCEEDED) << again_done.error_message();
  EXPECT_EQ(again_done.artifact_id(), done.artifact_id());

  // A different config is a different job, even while one runs.
  absl::StatusOr<v1::Job> int8 = jobs->SubmitJob(Request(v1::INT8));
  absl::StatusOr<v1::Job> nf4 = jobs->SubmitJob(Request(v1::NF4));
  ASSERT_TRUE(int8.ok() && nf4.ok());
  EXPECT_NE(int8->job_id(), nf4->job_id());
  EXPECT_EQ(WaitForEnd(*jobs, int8->job_id()).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(WaitForEnd(*jobs, nf4->job_id()).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(JobManagerTest, JobsOfDifferentRequestsForOneArtifactBothSucceed) {
  // "team/m" and "team_m" hold the same files: different requests (no
  // joining), the same artifact id, run side by side.
  const std::string source = options_.model_root + "/stories260K";
  options_.model_root = options_.artifact_root + "-models";
  for (const char* dir : {"/team/m", "/team_m"}) {
    ASSERT_TRUE(std::filesystem::create_directories(options_.model_root + dir));
    std::filesystem::copy(source, options_.model_root + dir);
  }
  options_.workers = 2;
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  std::vector<std::string> ids;
  for (const char* model : {"team/m", "team_m"}) {
    v1::SubmitJobRequest request = Request();
    request.set_model_id(model);
    absl::StatusOr<v1::Job> job = jobs->SubmitJob(request);
    ASSERT_TRUE(job.ok()) << job.status();
    ids.push_back(job->job_id());
  }
  ASSERT_NE(ids[0], ids[1]);
  v1::Job first = WaitForEnd(*jobs, ids[0]);
  v1::Job second = WaitForEnd(*jobs, ids[1]);
  EXPECT_EQ(first.state(), v1::JOB_STATE_SUCCEEDED) << first.error_message();
  EXPECT_EQ(second.state(), v1::JOB_STATE_SUCCEEDED) << second.error_message();
  EXPECT_EQ(first.artifact_id(), second.artifact_id());
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
  EXPECT_TRUE(jobs->Shutdown());
  for (const std::string& id : ids) {
    absl::StatusOr<v1::Job> job = jobs->GetJob(id);
    ASSERT_TRUE(job.ok());
    EXPECT_TRUE(IsTerminal(job->state())) << v1::JobState_Name(job->state());
  }
  EXPECT_EQ(jobs->GetJob(ids.back())->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(jobs->SubmitJob(Request()).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(JobManagerTest, JobsSurviveRestart) {
  v1::Job done;
  {
    auto jobs = Make();
    ASSERT_NE(jobs, nullptr);
    absl::StatusOr<v1::Job> job = jobs->SubmitJob(Request());
    ASSERT_TRUE(job.ok()) << job.status();
    done = WaitForEnd(*jobs, job->job_id());
    ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error_message();
  }
  const std::string dir = options_.artifact_root + "/.jobs/";
  // A job the previous server was running when it died, records it cannot
  // read, and a temporary a crash left mid-write.
  auto write = [&](const std::string& name, const std::string& contents) {
    std::ofstream(dir + name) << contents;
  };
  write("job-running.json",
        R"({"job_id":"job-running","model_id":"stories260K","state":"JOB_STATE_RUNNING",)"
        R"("create_time":"2030-01-01T00:00:00Z","progress":{"phase":"PHASE_QUANTIZING"}})");
  write("job-garbage.json", "{not json");
  write("job-other.json", R"({"job_id":"job-elsewhere","state":"JOB_STATE_SUCCEEDED"})");
  write("job-x.json.tmp", "{");

  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  absl::StatusOr<v1::Job> reloaded = jobs->GetJob(done.job_id());
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(reloaded->DebugString(), done.DebugString());
  absl::StatusOr<v1::Job> interrupted = jobs->GetJob("job-running");
  ASSERT_TRUE(interrupted.ok()) << interrupted.status();
  EXPECT_EQ(interrupted->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(interrupted->error_message(), "interrupted by restart");
  EXPECT_EQ(interrupted->progress().phase(), v1::PHASE_QUANTIZING);
  EXPECT_EQ(jobs->GetJob("job-elsewhere").status().code(), absl::StatusCode::kNotFound);
  std::vector<v1::Job> listed = AllJobs(*jobs);
  ASSERT_EQ(listed.size(), 2u);  // oldest first
  EXPECT_EQ(listed[0].job_id(), done.job_id());
  EXPECT_EQ(listed[1].job_id(), "job-running");
  EXPECT_FALSE(std::filesystem::exists(dir + "job-x.json.tmp"));
  EXPECT_EQ(jobs->ListArtifacts().size(), 1u) << "job records are not artifacts";

  // The interrupted job's new state is itself durable.
  jobs.reset();
  jobs = Make();
  ASSERT_NE(jobs, nullptr);
  EXPECT_EQ(jobs->GetJob("job-running")->end_time().seconds(), interrupted->end_time().seconds());
}

TEST_F(JobManagerTest, ListJobsPages) {
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    // Different group sizes: distinct jobs, none joining another.
    v1::SubmitJobRequest request = Request();
    request.mutable_config()->set_group_size(32 << (i % 2));
    request.mutable_config()->set_weight_dtype(i < 2 ? v1::INT4_CLIP : i < 4 ? v1::INT8 : v1::NF4);
    absl::StatusOr<v1::Job> job = jobs->SubmitJob(request);
    ASSERT_TRUE(job.ok()) << job.status();
    ids.push_back(job->job_id());
  }
  v1::ListJobsRequest request;
  request.set_page_size(2);
  absl::StatusOr<v1::ListJobsResponse> page = jobs->ListJobs(request);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->jobs_size(), 2);
  EXPECT_FALSE(page->next_page_token().empty());
  std::vector<std::string> listed;
  for (const v1::Job& job : AllJobs(*jobs, 2)) listed.push_back(job.job_id());
  EXPECT_EQ(listed, ids);
  listed.clear();
  for (const v1::Job& job : AllJobs(*jobs)) listed.push_back(job.job_id());
  EXPECT_EQ(listed, ids);

  request.set_page_size(-1);
  EXPECT_EQ(jobs->ListJobs(request).status().code(), absl::StatusCode::kInvalidArgument);
  request.set_page_size(0);
  request.set_page_token("garbage");
  EXPECT_EQ(jobs->ListJobs(request).status().code(), absl::StatusCode::kInvalidArgument);
  for (const std::string& id : ids) WaitForEnd(*jobs, id);
}

TEST_F(JobManagerTest, ListJobsPagesStayUnderTheMessageLimit) {
  // 30 records of about 200 KiB each (the most log a job keeps), left by an
  // earlier server: 6 MiB in all, over gRPC's 4 MiB default.
  const std::string dir = options_.artifact_root + "/.jobs/";
  ASSERT_TRUE(std::filesystem::create_directories(dir));
  const std::string line(1024, 'x');
  for (int i = 0; i < 30; ++i) {
    v1::Job job;
    job.set_job_id(absl::StrCat("job-", 100 + i));
    job.set_state(v1::JOB_STATE_SUCCEEDED);
    job.mutable_create_time()->set_seconds(1000 + i);
    for (int j = 0; j < 200; ++j) job.add_log(line);
    std::string json;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(job, &json).ok());
    std::ofstream(dir + job.job_id() + ".json") << json;
  }
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  v1::ListJobsRequest request;
  request.set_page_size(1000);
  int pages = 0;
  int listed = 0;
  do {
    absl::StatusOr<v1::ListJobsResponse> page = jobs->ListJobs(request);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_LE(page->ByteSizeLong(), 3u << 20);
    EXPECT_GT(page->jobs_size(), 0);
    ++pages;
    listed += page->jobs_size();
    request.set_page_token(page->next_page_token());
  } while (!request.page_token().empty());
  EXPECT_EQ(listed, 30);
  EXPECT_GE(pages, 2);
}

TEST_F(JobManagerTest, FinishedJobsBeyondRetentionAreEvicted) {
  options_.job_retention = 2;
  std::vector<std::string> ids;
  {
    auto jobs = Make();
    ASSERT_NE(jobs, nullptr);
    for (v1::WeightDtype dtype : {v1::INT8, v1::NF4, v1::FP4_E2M1, v1::INT4_CLIP}) {
      absl::StatusOr<v1::Job> job = jobs->SubmitJob(Request(dtype));
      ASSERT_TRUE(job.ok()) << job.status();
      ids.push_back(job->job_id());
      // One at a time: end order is submission order.
      EXPECT_EQ(WaitForEnd(*jobs, job->job_id()).state(), v1::JOB_STATE_SUCCEEDED);
    }
    std::vector<v1::Job> listed = AllJobs(*jobs);
    ASSERT_EQ(listed.size(), 2u);
    EXPECT_EQ(listed[0].job_id(), ids[2]);
    EXPECT_EQ(listed[1].job_id(), ids[3]);
    EXPECT_EQ(jobs->GetJob(ids[0]).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(jobs->ListArtifacts().size(), 4u) << "artifacts outlive their jobs";
  }
  // Evicted records are gone from disk too.
  options_.job_retention = 1000;
  auto jobs = Make();
  ASSERT_NE(jobs, nullptr);
  EXPECT_EQ(AllJobs(*jobs).size(), 2u);
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

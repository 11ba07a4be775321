// Quantization jobs: validated at submission, queued, run by a fixed pool of
// worker threads over QuantizeModel, observable while they run. No gRPC
// here (only the proto messages), so it is testable on its own.
//
// Jobs are durable: each one's record (the Job message as JSON) is replaced
// atomically under <artifact_root>/.jobs/<job_id>.json on every state or
// phase change, so a restarted server lists finished jobs as they ended and
// interrupted ones as FAILED "interrupted by restart".
#ifndef WQ_QUANTIZER_SERVICE_JOB_MANAGER_H_
#define WQ_QUANTIZER_SERVICE_JOB_MANAGER_H_

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/artifact/artifact_store.h"
#include "common/artifact/model_registry.h"
#include "common/quant/quantizer.h"
#include "wq/v1/quantizer.pb.h"

namespace wq {

class JobManager {
 public:
  struct Options {
    std::string model_root;
    std::string artifact_root;
    std::string data_root;  // calibration files are resolved under it
    int workers = 1;        // jobs run concurrently
    // Finished jobs kept (>= 1); beyond it the oldest finished are forgotten,
    // records included.
    int job_retention = 1000;
  };

  // Opens the artifact store (creating the root), loads the job records left
  // by earlier runs (skipping, with a log line, any it cannot read) and
  // starts the workers.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(Options options);
  // Shutdown().
  ~JobManager();

  // Validates model id and config at once (NOT_FOUND / INVALID_ARGUMENT /
  // UNIMPLEMENTED saying what to change) and returns the QUEUED job. A
  // request equal to a queued or running job's (same model id and resolved
  // config, hence the same artifact) returns that job instead: its
  // submitters share it, cancellation included.
  absl::StatusOr<v1::Job> SubmitJob(const v1::SubmitJobRequest& request);
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id) const;
  // Oldest first, a page at a time: page_size 0 means 100, more than 1000
  // means 1000, and a page stops short of 3 MiB. next_page_token is set
  // while jobs remain. INVALID_ARGUMENT for a negative size or a token no
  // response gave.
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request) const;
  // A queued job ends CANCELLED at once; a running one at its next check,
  // leaving no artifact. FAILED_PRECONDITION when it has already ended.
  absl::StatusOr<v1::Job> CancelJob(const std::string& job_id);

  // Calls `emit` with a snapshot now and after every change, returning after
  // the terminal snapshot. Returns CANCELLED as soon as `stop` says so (it is
  // polled at least every `poll`) or `emit` returns false.
  absl::Status WatchJob(const std::string& job_id,
                        const std::function<bool(const v1::Job&)>& emit,
                        const std::function<bool()>& stop,
                        absl::Duration poll = absl::Milliseconds(200)) const;

  std::vector<v1::Artifact> ListArtifacts() const;
  absl::StatusOr<v1::Artifact> GetArtifact(const std::string& artifact_id) const;

  // Cancels queued and running jobs and joins the workers. Later submissions
  // fail with UNAVAILABLE. Idempotent. False, leaving the workers running,
  // when a job has not stopped within `grace`: the caller may then exit
  // the process (the job's record then says it was interrupted), or call
  // again to wait longer; destroying the manager waits without bound.
  bool Shutdown(absl::Duration grace = absl::InfiniteDuration());

 private:
  struct JobEntry {
    v1::Job job;
    RootedPath model_dir;
    std::string request_key;  // equal keys produce equal artifacts
    std::atomic<bool> cancelled{false};
    absl::Time started;
    int64_t version = 0;  // bumped on every change; watchers wait on it
  };

  explicit JobManager(Options options, std::unique_ptr<ArtifactStore> store);
  // Forgets the oldest finished jobs beyond options_.job_retention.
  void EvictFinished() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads the records under jobs_dir_; interrupted jobs end FAILED.
  void LoadRecords() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Replaces the job's record; a failure is logged, the job goes on.
  void Persist(const v1::Job& job) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLoop();
  void RunJob(JobEntry* entry);
  // Records a change to `entry`, persisting it if asked, and wakes watchers.
  // Persisting under mu_ keeps a job's records in the order of its changes.
  void Touch(JobEntry* entry, bool persist = true) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<JobEntry*> Find(const std::string& job_id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The queued or running, not cancelled, job with this key, or null.
  JobEntry* FindActive(const std::string& request_key) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status ValidateCalibration(const v1::WeightOnlyQuantConfig& config) const;
  absl::StatusOr<v1::Artifact> ArtifactOf(const v1::ArtifactManifest& manifest) const;

  const Options options_;
  const std::unique_ptr<ArtifactStore> store_;
  const std::string jobs_dir_;  // job records
  const ModelRegistry registry_;

  mutable absl::Mutex mu_;
  mutable absl::CondVar changed_;  // any job changed, or the queue grew
  std::map<std::string, std::unique_ptr<JobEntry>> jobs_ ABSL_GUARDED_BY(mu_);
  // Create time (Unix nanoseconds) and id; ListJobs' order and page tokens.
  using OrderKey = std::pair<int64_t, std::string>;
  std::map<OrderKey, std::string> order_ ABSL_GUARDED_BY(mu_);  // to job id
  std::deque<JobEntry*> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int running_ ABSL_GUARDED_BY(mu_) = 0;  // jobs a worker has taken
  std::vector<std::thread> workers_;
  // wq:quantize_jobs and wq:quantize_job_phase, read at scrape time; last,
  // as they read jobs_.
  std::shared_ptr<void> jobs_collector_, phase_collector_;
};

bool IsTerminal(v1::JobState state);

}  // namespace wq

#endif  // WQ_QUANTIZER_SERVICE_JOB_MANAGER_H_

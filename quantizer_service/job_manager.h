// Quantization jobs: validated at submission, queued, run by a fixed pool of
// worker threads over QuantizeModel, observable while they run. No gRPC
// here (only the proto messages), so it is testable on its own.
#ifndef WQ_QUANTIZER_SERVICE_JOB_MANAGER_H_
#define WQ_QUANTIZER_SERVICE_JOB_MANAGER_H_

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/artifact_store.h"
#include "common/model_registry.h"
#include "common/quantizer.h"
#include "proto/wq/v1/quantizer.pb.h"

namespace wq {

class JobManager {
 public:
  struct Options {
    std::string model_root;
    std::string artifact_root;
    std::string data_root;  // calibration files are resolved under it
    int workers = 1;        // jobs run concurrently
  };

  // Opens the artifact store (creating the root) and starts the workers.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(Options options);
  // Shutdown().
  ~JobManager();

  // Validates model id and config at once (NOT_FOUND / INVALID_ARGUMENT /
  // UNIMPLEMENTED saying what to change) and returns the QUEUED job.
  absl::StatusOr<v1::Job> SubmitJob(const v1::SubmitJobRequest& request);
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id) const;
  // Oldest first.
  std::vector<v1::Job> ListJobs() const;
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
  // fail with UNAVAILABLE. Idempotent.
  void Shutdown();

 private:
  struct JobEntry {
    v1::Job job;
    RootedPath model_dir;
    std::atomic<bool> cancelled{false};
    absl::Time started;
    int64_t version = 0;  // bumped on every change; watchers wait on it
  };

  explicit JobManager(Options options, std::unique_ptr<ArtifactStore> store);
  void WorkerLoop();
  void RunJob(JobEntry* entry);
  // Records a change to `entry` and wakes watchers.
  void Touch(JobEntry* entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<JobEntry*> Find(const std::string& job_id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status ValidateCalibration(const v1::WeightOnlyQuantConfig& config) const;
  absl::StatusOr<v1::Artifact> ArtifactOf(const v1::ArtifactManifest& manifest) const;

  const Options options_;
  const std::unique_ptr<ArtifactStore> store_;
  const ModelRegistry registry_;

  mutable absl::Mutex mu_;
  mutable absl::CondVar changed_;  // any job changed, or the queue grew
  std::map<std::string, std::unique_ptr<JobEntry>> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> order_ ABSL_GUARDED_BY(mu_);  // submission order
  std::deque<JobEntry*> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

bool IsTerminal(v1::JobState state);

}  // namespace wq

#endif  // WQ_QUANTIZER_SERVICE_JOB_MANAGER_H_

#include "quantizer_service/one_shot.h"

#include <cstdlib>
#include <iostream>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "common/io/logging.h"

namespace wq {

absl::StatusOr<v1::SubmitJobRequest> OneShotRequest(const std::string& model_id,
                                                     const std::string& config_json) {
  if (model_id.empty()) return absl::InvalidArgumentError("--once needs --model_id");
  v1::SubmitJobRequest request;
  request.set_model_id(model_id);
  const google::protobuf::util::Status parsed =
      google::protobuf::util::JsonStringToMessage(config_json, request.mutable_config());
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the config is not a wq.v1.WeightOnlyQuantConfig in JSON: ",
        std::string(parsed.message())));
  }
  return request;
}

int RunOneShot(JobManager& jobs, const v1::SubmitJobRequest& request,
               const std::function<bool()>& stop, absl::Duration grace) {
  absl::StatusOr<v1::Job> submitted = jobs.SubmitJob(request);
  if (!submitted.ok()) {
    LogError("job_refused", {{"error", submitted.status().ToString()}});
    return kOneShotBadRequest;
  }
  v1::Job last = *submitted;
  const absl::Status watched = jobs.WatchJob(
      submitted->job_id(),
      [&last](const v1::Job& job) {
        last = job;
        const v1::JobProgress& p = job.progress();
        LogInfo("job_progress", {{"job_id", job.job_id()},
                                 {"state", v1::JobState_Name(job.state())},
                                 {"phase", v1::JobPhase_Name(p.phase())},
                                 {"percent", p.percent()},
                                 {"message", p.message()}});
        return true;
      },
      stop);
  if (!watched.ok()) {
    // Only a signal ends the watch early: cancel the job (its temporary
    // directory goes with it) before exiting.
    LogError("job_interrupted", {{"job_id", submitted->job_id()},
                                 {"error", watched.ToString()}});
    (void)jobs.CancelJob(submitted->job_id());
    if (!jobs.Shutdown(grace)) {
      // Destroying the manager would wait for the stuck job without bound.
      LogError("shutdown_forced", {{"exit_code", kOneShotJobFailed}});
      std::_Exit(kOneShotJobFailed);
    }
    return kOneShotJobFailed;
  }
  if (last.state() != v1::JOB_STATE_SUCCEEDED) {
    LogError("job_failed", {{"job_id", last.job_id()},
                            {"state", v1::JobState_Name(last.state())},
                            {"error", last.error_message()}});
    return kOneShotJobFailed;
  }
  LogInfo("job_succeeded", {{"job_id", last.job_id()}, {"artifact_id", last.artifact_id()}});
  std::cout << last.artifact_id() << std::endl;
  return kOneShotSucceeded;
}

}  // namespace wq

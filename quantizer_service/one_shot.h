// quantizer_service --once: one job run to its end in this process, with no
// gRPC server, for CI steps and Kubernetes Jobs. The same JobManager path as
// the service (validation, reuse of an existing artifact, atomic artifact
// write, the job's record under <artifact_root>/.jobs).
#ifndef WQ_QUANTIZER_SERVICE_ONE_SHOT_H_
#define WQ_QUANTIZER_SERVICE_ONE_SHOT_H_

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "quantizer_service/job_manager.h"
#include "wq/v1/quantizer.pb.h"

namespace wq {

// Exit codes of --once (wqctl's meanings).
inline constexpr int kOneShotSucceeded = 0;
inline constexpr int kOneShotJobFailed = 1;  // failed or cancelled
inline constexpr int kOneShotBadRequest = 2;  // refused before it ran

// The request from --model_id and a WeightOnlyQuantConfig as protobuf JSON
// (field names as in the proto or lowerCamelCase, enums by name, e.g.
// {"weight_dtype": "INT4_CLIP", "group_size": 32}); INVALID_ARGUMENT naming
// what is wrong.
absl::StatusOr<v1::SubmitJobRequest> OneShotRequest(const std::string& model_id,
                                                     const std::string& config_json);

// Submits the request, logs a "job_progress" line per change and returns the
// exit code; on success the artifact id is the one line on stdout. When
// `stop` turns true (a signal), the job is cancelled within `grace`.
int RunOneShot(JobManager& jobs, const v1::SubmitJobRequest& request,
               const std::function<bool()>& stop, absl::Duration grace);

}  // namespace wq

#endif  // WQ_QUANTIZER_SERVICE_ONE_SHOT_H_

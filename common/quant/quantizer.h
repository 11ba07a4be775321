// Quantizes a whole Llama model into an artifact. Work runs on oneTBB:
// decoder blocks in parallel, and the rows of each matrix inside them.
#ifndef WQ_COMMON_QUANTIZER_H_
#define WQ_COMMON_QUANTIZER_H_

#include <atomic>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "common/artifact/artifact_store.h"
#include "wq/v1/artifact.pb.h"
#include "wq/v1/quant_config.pb.h"

namespace wq {

enum class QuantizePhase {
  kLoading,
  kCalibration,  // AWQ / TEQ: tokenising, capturing a block's activations
  kGridSearch,   // AWQ scale search / TEQ training of block `step`
  kClipSearch,   // AWQ clip search of block `step`
  kQuantizing,
  kWriting,
  kDone,
};

struct QuantizeProgress {
  QuantizePhase phase = QuantizePhase::kLoading;
  int step = 0;         // e.g. decoder blocks finished
  int total_steps = 0;
  double fraction = 0;  // of the whole job, 0..1
  std::string message;
};

struct QuantizeRequest {
  std::string model_id;   // recorded in the manifest
  RootedPath model_dir;   // source directory, beneath the model root
  std::string data_root;  // calibration data_file is resolved under it
  v1::WeightOnlyQuantConfig config;  // as the user sent it
  // Called from worker threads, serialised; must be cheap.
  std::function<void(const QuantizeProgress&)> on_progress;
  // Polled between units of work (AWQ / TEQ: also inside a block); when set
  // the job ends with CANCELLED and leaves no artifact.
  const std::atomic<bool>* cancelled = nullptr;
};

// The id an artifact of this model and config gets: deterministic, so the
// same request twice yields the same artifact.
absl::StatusOr<std::string> ArtifactIdFor(const QuantizeRequest& request,
                                          const std::string& source_checksum);

// sha256 over the source model's files (names and contents).
absl::StatusOr<std::string> ModelChecksum(const RootedPath& model_dir);

// Quantizes and commits the artifact; returns its manifest. The checkpoint is
// streamed one decoder block at a time: RTN (with mse_range if set)
// quantizes each block, after AWQ or TEQ transformed it on the calibration
// set (RunCalibratedTransform), and writes it before the next is read, so
// memory holds about one block (plus the embedding and, for AWQ / TEQ, the
// calibration activations) whatever the model size. If the artifact already
// exists, returns its manifest without redoing the work.
absl::StatusOr<v1::ArtifactManifest> QuantizeModel(const QuantizeRequest& request,
                                                   ArtifactStore& store);

}  // namespace wq

#endif  // WQ_COMMON_QUANTIZER_H_

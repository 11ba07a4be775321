// Quantized models on disk: one directory per artifact under a root,
//   <root>/<artifact_id>/manifest.json      (v1::ArtifactManifest as JSON)
//                       /model.safetensors  (packed codes, scales, fp32 rest)
//                       /config.json, tokenizer files (copied from the source)
// An artifact is written under a hidden temporary name, fsync'ed and renamed
// into place, so a crash never leaves a half-written artifact visible. The
// writer holds a flock on "<temporary>.lock" beside it; temporaries whose
// lock nobody holds were left by a crash and are removed when a store opens,
// while another process's writes in progress are left alone.
#ifndef WQ_COMMON_ARTIFACT_STORE_H_
#define WQ_COMMON_ARTIFACT_STORE_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/io/file_util.h"
#include "common/model/llama.h"
#include "wq/v1/artifact.pb.h"

namespace wq {

inline constexpr char kManifestFile[] = "manifest.json";
// sha256 of manifest.json as lowercase hex: the manifest's checksums cover
// every other file, this one covers the manifest (its config and tensor
// entries). Artifacts written before it have none and are read as before.
inline constexpr char kManifestChecksumFile[] = "manifest.sha256";
// Files larger than this also get per-chunk checksums (ManifestFile), which
// loading verifies in parallel.
inline constexpr int64_t kVerifyChunkBytes = int64_t{64} << 20;
// The tensors' names and layouts: artifact_format.h.
inline constexpr char kWeightsFile[] = "model.safetensors";

struct LoadOptions {
  // Arithmetic of the quantized linears; unset: the artifact's compute_dtype.
  std::optional<ComputeDtype> compute;
  // Tensors in an int8 tile layout (artifact_format.h) are read in place
  // from the artifact's copy in memory. true copies them once more into the
  // kernels' own allocation (the artifact's copy of them is freed), which
  // decoded faster on the benchmark VM when the weights were mapped
  // (bench/results/speed.md).
  bool private_weights = false;
};

// An artifact being written. Destroying it without Commit() removes it.
class ArtifactWriter {
 public:
  ~ArtifactWriter();
  // Directory to write the artifact's files into.
  const std::string& dir() const { return tmp_dir_; }
  // Records every file's size and sha256 in the manifest, writes
  // manifest.json and its manifest.sha256, fsyncs and publishes the
  // directory atomically.
  // ALREADY_EXISTS if an artifact of that id appeared meanwhile.
  absl::Status Commit(v1::ArtifactManifest manifest);

 private:
  friend class ArtifactStore;
  ArtifactWriter(std::string root, std::string id, std::string tmp_dir, ScopedFd lock);
  std::string root_, id_, tmp_dir_;
  ScopedFd lock_;  // flock on tmp_dir_ + ".lock" while writing
  bool committed_ = false;
};

// An artifact's manifest.json text parsed and checked as ReadManifest checks
// it after the checksum (format, version and what its tensors need, the id
// it names): DATA_LOSS, or FAILED_PRECONDITION for a newer format.
absl::StatusOr<v1::ArtifactManifest> ParseManifest(absl::string_view json,
                                                   const std::string& artifact_id);

class ArtifactStore {
 public:
  // Creates the root if needed and removes stale temporaries.
  static absl::StatusOr<std::unique_ptr<ArtifactStore>> Open(const std::string& root);

  const std::string& root() const { return root_; }
  bool Exists(const std::string& artifact_id) const;
  absl::StatusOr<std::unique_ptr<ArtifactWriter>> Create(const std::string& artifact_id);

  // The manifest, after checking it against manifest.sha256 where there is
  // one (DATA_LOSS) and its format and version (FAILED_PRECONDITION for a
  // newer format). NOT_FOUND for an unknown id, INVALID_ARGUMENT for a
  // malformed one.
  absl::StatusOr<v1::ArtifactManifest> ReadManifest(const std::string& artifact_id) const;
  // Every file's sha256 against the manifest, by chunks in parallel (size
  // included) where the manifest lists them (DATA_LOSS naming the file and
  // chunk otherwise).
  absl::Status Verify(const std::string& artifact_id) const;
  // Manifests of all artifacts, sorted by id; unreadable ones are skipped.
  std::vector<v1::ArtifactManifest> List() const;
  // Renames a corrupt artifact aside to the hidden ".corrupt-<id>-<unix
  // seconds>" in the root, where ids and listings no longer reach it but an
  // operator can still inspect it; returns that name.
  absl::StatusOr<std::string> Quarantine(const std::string& artifact_id);
  // Total bytes of the artifact's files.
  absl::StatusOr<int64_t> SizeBytes(const std::string& artifact_id) const;

  // Verifies the artifact and copies model.safetensors into memory (never
  // mapped: truncating the file would SIGBUS a mapping's reader); quantized
  // linears are used in place from the copy, or packed for their kernels (int8 compute from a
  // row-major artifact), or converted back to row-major once (int8 tiles
  // with another compute dtype). See LoadOptions.
  absl::StatusOr<std::shared_ptr<const LlamaWeights>> LoadWeights(
      const std::string& artifact_id, const LoadOptions& options = {}) const;
  std::string ArtifactDir(const std::string& artifact_id) const;
  // The artifact's directory beneath the root, for OpenForRead: no symlink
  // may lead out of the root.
  RootedPath ArtifactPath(const std::string& artifact_id) const;

 private:
  explicit ArtifactStore(std::string root) : root_(std::move(root)) {}
  std::string root_;
};

}  // namespace wq

#endif  // WQ_COMMON_ARTIFACT_STORE_H_

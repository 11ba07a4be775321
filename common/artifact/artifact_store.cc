#include "common/artifact/artifact_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <future>
#include <list>
#include <map>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/artifact/artifact_format.h"
#include "common/io/file_util.h"
#include "common/model/hf_config.h"
#include "common/kernels/matmul.h"
#include "common/artifact/model_registry.h"
#include "common/formats/quant_config.h"
#include "common/formats/quant_format.h"
#include "common/formats/safetensors.h"
#include "common/io/status_macros.h"
#include "google/protobuf/util/json_util.h"

namespace wq {

namespace fs = std::filesystem;
namespace {

constexpr char kTempPrefix[] = ".tmp-";
constexpr char kQuarantinePrefix[] = ".corrupt-";
constexpr char kLockSuffix[] = ".lock";

// An exclusive flock on `path` (created when `create`), taken without
// waiting: UNAVAILABLE while another open file holds it, the lock held as
// long as the descriptor stays open.
absl::StatusOr<ScopedFd> TryLock(const std::string& path, bool create) {
  const int raw = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT : 0),
                         0644);
  // Messages name the file within the artifact root, never the root.
  const std::string name = fs::path(path).filename().string();
  if (raw < 0) return absl::InternalError(absl::StrCat("cannot open ", name, ": ", strerror(errno)));
  ScopedFd fd(raw);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    return absl::UnavailableError(absl::StrCat(name, " is locked: ", strerror(errno)));
  }
  return fd;
}

absl::Status ValidateArtifactId(const std::string& id) {
  return ValidateResourceId(id, "artifact id", /*max_components=*/1);
}

// Weights of a committed artifact: fp32 tensors and packed codes used in
// place from model.safetensors, copied into memory at load so that a file
// truncated or rewritten under a running server cannot fault (SIGBUS) the
// weights it serves.
class ArtifactSource : public WeightSource {
 public:
  absl::Status Open(const RootedPath& dir, const v1::ArtifactManifest& manifest,
                    const LoadOptions& options) {
    ASSIGN_OR_RETURN(file_, SafetensorsFile::Open(dir.Child(kWeightsFile), FileBacking::kCopied));
    for (const v1::ManifestTensor& t : manifest.tensors()) modules_[t.module()] = t;
    compute_ = options.compute.value_or(ComputeDtypeOf(manifest.config().compute_dtype()));
    private_weights_ = options.private_weights;
    return absl::OkStatus();
  }

  bool Has(absl::string_view name) override { return modules_.count(std::string(name)) > 0; }

  absl::StatusOr<const float*> F32(absl::string_view name,
                                   absl::Span<const int64_t> shape) override {
    ASSIGN_OR_RETURN(const TensorInfo* t, file_->Get(std::string(name), DType::kF32, shape));
    if (t->offset % alignof(float) != 0) {
      return absl::DataLossError(absl::StrCat("tensor ", t->name, " is not 4-byte aligned"));
    }
    return reinterpret_cast<const float*>(file_->data(*t));
  }

  absl::StatusOr<LinearWeight> Linear(absl::string_view name, int64_t out_features,
                                      int64_t in_features) override {
    auto it = modules_.find(std::string(name));
    if (it == modules_.end()) {
      return absl::DataLossError(absl::StrCat("manifest has no tensor ", std::string(name)));
    }
    const v1::ManifestTensor& t = it->second;
    if (!t.quantized()) {
      const int64_t shape[] = {out_features, in_features};
      ASSIGN_OR_RETURN(const float* w, F32(DenseWeightName(name), shape));
      return LinearWeight::Dense(w, out_features, in_features);
    }
    ASSIGN_OR_RETURN(StoredLinear stored,
                     ReadQuantizedLinear(*file_, t, out_features, in_features));
    if (stored.tiles != nullptr) return TiledLinear(std::move(stored));
    const QuantizedMatrixView& view = stored.view;
    // The arithmetic the artifact was quantized for (its compute_dtype) or the caller's.
    std::shared_ptr<const PackedWeights> packed = PackWeights(view, compute_);
    if (packed != nullptr && PackedCoversView(view, compute_)) {
      // The kernels read the packed copy only: the row-major one goes, so
      // the weights are held once.
      Release(stored);
      QuantizedMatrixView shape_only = view;
      shape_only.codes = nullptr;
      shape_only.scales = nullptr;
      shape_only.zeros = nullptr;
      return LinearWeight::Quantized(shape_only, compute_, std::move(packed));
    }
    // Moving the vector into the list keeps its buffer where view.scales points.
    if (!stored.decoded_scales.empty()) owned_scales_.push_back(std::move(stored.decoded_scales));
    return LinearWeight::Quantized(view, compute_, std::move(packed));
  }

 private:
  // The file's pages of a linear that the kernels no longer read.
  void Release(const StoredLinear& stored) {
    for (const TensorInfo* t : stored.in_place) file_->ReleasePages(*t);
  }

  // A linear in an int8 tile layout.
  absl::StatusOr<LinearWeight> TiledLinear(StoredLinear stored) {
    const QuantizedMatrixView& view = stored.view;
    // Read in place from the copy. Memory-safe whatever the bytes (the kernels index
    // nothing by a code beyond its 16- or 256-entry table), and the load
    // fails unless the checksums, verified meanwhile, match the manifest.
    // Codes outside the format's level table are not looked for here (the
    // row-major path below rejects them): they compute garbage, not harm.
    if (auto packed = MapInt8Tiles(view, compute_, stored.tiles, private_weights_)) {
      if (private_weights_) Release(stored);
      return LinearWeight::Quantized(view, compute_, std::move(packed));
    }
    // Other arithmetic (or the scalar reference): the row-major layout, once.
    const QuantizedMatrix& m = unpacked_.emplace_back(FromInt8Tiles(view, stored.tiles));
    RETURN_IF_ERROR(ValidateQuantizedMatrixView(m.view(), m.codes.size(), m.scales.size(),
                                                m.zeros.size()));
    Release(stored);
    return LinearWeight::Quantized(m.view(), compute_);
  }

  std::unique_ptr<SafetensorsFile> file_;
  std::deque<QuantizedMatrix> unpacked_;  // deque: stable addresses
  std::map<std::string, v1::ManifestTensor> modules_;
  ComputeDtype compute_ = ComputeDtype::kFp32;
  bool private_weights_ = false;
  std::list<std::vector<float>> owned_scales_;  // decoded scales the kernels read
};

}  // namespace

ArtifactWriter::ArtifactWriter(std::string root, std::string id, std::string tmp_dir,
                               ScopedFd lock)
    : root_(std::move(root)),
      id_(std::move(id)),
      tmp_dir_(std::move(tmp_dir)),
      lock_(std::move(lock)) {}

ArtifactWriter::~ArtifactWriter() {
  if (committed_) return;
  RemoveTree(tmp_dir_).IgnoreError();
  // Unlinked while still held (lock_ closes after), so no cleaner can take
  // it for a directory that is still here.
  ::unlink(absl::StrCat(tmp_dir_, kLockSuffix).c_str());
}

absl::Status ArtifactWriter::Commit(v1::ArtifactManifest manifest) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(tmp_dir_, ec)) {
    if (entry.is_regular_file() && entry.path().filename() != kManifestFile &&
        entry.path().filename() != kManifestChecksumFile) {
      names.push_back(entry.path().filename().string());
    }
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot list the temporary directory of artifact ",
                                            id_, ": ", ec.message()));
  }
  std::sort(names.begin(), names.end());
  manifest.clear_files();
  for (const std::string& name : names) {
    const std::string path = absl::StrCat(tmp_dir_, "/", name);
    ASSIGN_OR_RETURN(std::string sha, Sha256File(path));
    v1::ManifestFile* f = manifest.add_files();
    f->set_name(name);
    f->set_size_bytes(static_cast<int64_t>(fs::file_size(path, ec)));
    f->set_sha256(sha);
    if (f->size_bytes() > kVerifyChunkBytes) {
      ASSIGN_OR_RETURN(std::vector<std::string> chunks, Sha256FileChunks(path, kVerifyChunkBytes));
      f->set_chunk_bytes(kVerifyChunkBytes);
      for (std::string& c : chunks) f->add_chunk_sha256(std::move(c));
    }
    // Files written by others (copies of the tokenizer) must be durable too.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::fsync(fd) != 0) {
      if (fd >= 0) ::close(fd);
      return absl::InternalError(absl::StrCat("cannot fsync ", path));
    }
    ::close(fd);
  }
  manifest.set_format(kArtifactFormat);
  manifest.set_format_version(FormatVersionToWrite(manifest));
  manifest.set_artifact_id(id_);
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(manifest, &json, options).ok()) {
    return absl::InternalError("cannot serialise the artifact manifest");
  }
  RETURN_IF_ERROR(WriteFileDurably(absl::StrCat(tmp_dir_, "/", kManifestFile), json));
  RETURN_IF_ERROR(
      WriteFileDurably(absl::StrCat(tmp_dir_, "/", kManifestChecksumFile), Sha256Hex(json) + "\n"));
  RETURN_IF_ERROR(FsyncDirectory(tmp_dir_));
  const std::string final_dir = absl::StrCat(root_, "/", id_);
  // rename() of a directory fails if the target exists and is not empty.
  if (::rename(tmp_dir_.c_str(), final_dir.c_str()) != 0) {
    if (errno == EEXIST || errno == ENOTEMPTY) {
      return absl::AlreadyExistsError(absl::StrCat("artifact ", id_, " already exists"));
    }
    return absl::InternalError(absl::StrCat("cannot publish artifact ", id_, ": ", strerror(errno)));
  }
  committed_ = true;
  ::unlink(absl::StrCat(tmp_dir_, kLockSuffix).c_str());
  return FsyncDirectory(root_);
}

absl::StatusOr<std::unique_ptr<ArtifactStore>> ArtifactStore::Open(const std::string& root) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create artifact root ", root, ": ", ec.message()));
  std::vector<std::string> temporaries;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    if (absl::StartsWith(entry.path().filename().string(), kTempPrefix)) {
      temporaries.push_back(entry.path().string());
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list artifact root ", root, ": ", ec.message()));
  // A temporary whose lock this process can take has no writer: a crash
  // left it (a lock file left alone means its directory is gone already).
  for (const std::string& path : temporaries) {
    const bool is_lock = absl::EndsWith(path, kLockSuffix);
    const std::string dir = is_lock ? path.substr(0, path.size() - strlen(kLockSuffix)) : path;
    if (is_lock && fs::exists(dir, ec)) continue;  // handled with its directory
    const std::string lock_path = absl::StrCat(dir, kLockSuffix);
    absl::StatusOr<ScopedFd> lock = TryLock(lock_path, /*create=*/!is_lock);
    if (!lock.ok()) continue;  // a writer is at work
    if (!is_lock) RemoveTree(dir).IgnoreError();
    ::unlink(lock_path.c_str());
  }
  return std::unique_ptr<ArtifactStore>(new ArtifactStore(fs::absolute(root).string()));
}

std::string ArtifactStore::ArtifactDir(const std::string& artifact_id) const {
  return absl::StrCat(root_, "/", artifact_id);
}

RootedPath ArtifactStore::ArtifactPath(const std::string& artifact_id) const {
  return RootedPath(root_, artifact_id);
}

bool ArtifactStore::Exists(const std::string& artifact_id) const {
  return ValidateArtifactId(artifact_id).ok() &&
         OpenForRead(ArtifactPath(artifact_id).Child(kManifestFile)).ok();
}

absl::StatusOr<std::unique_ptr<ArtifactWriter>> ArtifactStore::Create(
    const std::string& artifact_id) {
  RETURN_IF_ERROR(ValidateArtifactId(artifact_id));
  if (Exists(artifact_id)) {
    return absl::AlreadyExistsError(absl::StrCat("artifact ", artifact_id, " already exists"));
  }
  std::random_device random;
  const std::string tmp = absl::StrCat(root_, "/", kTempPrefix, artifact_id, "-", random());
  // The lock first: a directory is never seen without its owner's lock.
  absl::StatusOr<ScopedFd> lock = TryLock(absl::StrCat(tmp, kLockSuffix), /*create=*/true);
  if (!lock.ok()) {
    return absl::InternalError(absl::StrCat("cannot lock the temporary directory of artifact ",
                                            artifact_id, ": ", lock.status().message()));
  }
  std::error_code ec;
  if (!fs::create_directory(tmp, ec)) {
    ::unlink(absl::StrCat(tmp, kLockSuffix).c_str());
    return absl::InternalError(absl::StrCat("cannot create the temporary directory of artifact ",
                                            artifact_id, ": ", ec.message()));
  }
  return std::unique_ptr<ArtifactWriter>(
      new ArtifactWriter(root_, artifact_id, tmp, *std::move(lock)));
}

absl::StatusOr<v1::ArtifactManifest> ArtifactStore::ReadManifest(
    const std::string& artifact_id) const {
  RETURN_IF_ERROR(ValidateArtifactId(artifact_id));
  absl::StatusOr<std::string> json = ReadFile(ArtifactPath(artifact_id).Child(kManifestFile));
  if (absl::IsNotFound(json.status())) {
    return absl::NotFoundError(absl::StrCat("no artifact ", artifact_id));
  }
  if (!json.ok()) {
    return absl::Status(json.status().code(),
                        absl::StrCat("artifact ", artifact_id, ": ", json.status().message()));
  }
  absl::StatusOr<std::string> checksum =
      ReadFile(ArtifactPath(artifact_id).Child(kManifestChecksumFile));
  if (checksum.ok()) {
    if (absl::StripAsciiWhitespace(*checksum) != Sha256Hex(*json)) {
      return absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": ", kManifestFile,
                                              " does not match ", kManifestChecksumFile,
                                              "; it was edited or is corrupt"));
    }
  } else if (!absl::IsNotFound(checksum.status())) {
    return absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": cannot read ",
                                            kManifestChecksumFile, ": ",
                                            checksum.status().message()));
  }
  return ParseManifest(*json, artifact_id);
}

absl::StatusOr<v1::ArtifactManifest> ParseManifest(absl::string_view json,
                                                   const std::string& artifact_id) {
  v1::ArtifactManifest manifest;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // a newer writer's fields; the version decides
  if (!google::protobuf::util::JsonStringToMessage(
          google::protobuf::StringPiece(json.data(), json.size()), &manifest, options).ok()) {
    return absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": manifest.json is not a valid manifest"));
  }
  if (manifest.format() != kArtifactFormat) {
    return absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": manifest format is '",
                                            manifest.format(), "', expected '", kArtifactFormat, "'"));
  }
  if (absl::Status version = CheckFormatVersion(manifest); !version.ok()) {
    return absl::Status(version.code(),
                        absl::StrCat("artifact ", artifact_id, ": ", version.message()));
  }
  if (manifest.artifact_id() != artifact_id) {
    return absl::DataLossError(absl::StrCat("artifact directory ", artifact_id,
                                            " holds a manifest of ", manifest.artifact_id()));
  }
  return manifest;
}

namespace {

// One file against its manifest entry: by chunks, in parallel, when the
// manifest has them, else the whole file's sha256.
absl::Status VerifyFile(const std::string& artifact_id, const RootedPath& path,
                        const v1::ManifestFile& f) {
  auto corrupt = [&](const std::string& what) {
    return absl::DataLossError(
        absl::StrCat("artifact ", artifact_id, ": ", f.name(), " is corrupt (", what, ")"));
  };
  auto unreadable = [&](const absl::Status& s) {
    return absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": cannot read ", f.name(),
                                            ": ", s.message()));
  };
  if (f.chunk_sha256_size() == 0) {
    absl::StatusOr<std::string> sha = Sha256File(path);
    if (!sha.ok()) return unreadable(sha.status());
    if (*sha != f.sha256()) {
      return corrupt(absl::StrCat("sha256 ", *sha, ", manifest says ", f.sha256()));
    }
    return absl::OkStatus();
  }
  const absl::StatusOr<int64_t> file_size = FileSize(path);
  if (!file_size.ok()) return unreadable(file_size.status());
  const int64_t size = *file_size;
  if (size != f.size_bytes()) {
    return corrupt(absl::StrCat(size, " bytes, manifest says ", f.size_bytes()));
  }
  const int64_t chunk = f.chunk_bytes();  // untrusted: no overflow in the count
  if (chunk <= 0 || size / chunk + (size % chunk != 0) != f.chunk_sha256_size()) {
    return corrupt(absl::StrCat("manifest lists ", f.chunk_sha256_size(), " chunks of ",
                                f.chunk_bytes(), " bytes for ", size, " bytes"));
  }
  absl::StatusOr<std::vector<std::string>> chunks = Sha256FileChunks(path, f.chunk_bytes());
  if (!chunks.ok()) return unreadable(chunks.status());
  if (static_cast<int64_t>(chunks->size()) != f.chunk_sha256_size()) {
    return corrupt("its size changed while it was verified");
  }
  for (int i = 0; i < f.chunk_sha256_size(); ++i) {
    if ((*chunks)[i] != f.chunk_sha256(i)) {
      return corrupt(absl::StrCat("chunk ", i, " sha256 ", (*chunks)[i], ", manifest says ",
                                  f.chunk_sha256(i)));
    }
  }
  return absl::OkStatus();
}

// An artifact's files were checked when written, so whatever its parsers
// refuse (a header, an offset, a dtype, a name) is damage: DATA_LOSS, as
// the README promises. Other codes (a newer format, a CPU without the
// artifact's instructions) keep theirs.
absl::Status AsArtifactDataLoss(const std::string& artifact_id, const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kNotFound:
      return absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": ", status.message()));
    default:
      return status;
  }
}

}  // namespace

absl::Status ArtifactStore::Verify(const std::string& artifact_id) const {
  ASSIGN_OR_RETURN(v1::ArtifactManifest manifest, ReadManifest(artifact_id));
  bool has_weights = false;
  for (const v1::ManifestFile& f : manifest.files()) {
    if (absl::Status name = ValidateResourceId(f.name(), "artifact file name", 1); !name.ok()) {
      return AsArtifactDataLoss(artifact_id, name);
    }
    has_weights |= f.name() == kWeightsFile;
    RETURN_IF_ERROR(VerifyFile(artifact_id, ArtifactPath(artifact_id).Child(f.name()), f));
  }
  if (!has_weights) {
    return absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": manifest lists no ", kWeightsFile));
  }
  return absl::OkStatus();
}

std::vector<v1::ArtifactManifest> ArtifactStore::List() const {
  std::vector<v1::ArtifactManifest> manifests;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root_, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || absl::StartsWith(name, ".")) continue;
    absl::StatusOr<v1::ArtifactManifest> m = ReadManifest(name);
    if (m.ok()) manifests.push_back(*std::move(m));
  }
  std::sort(manifests.begin(), manifests.end(),
            [](const auto& a, const auto& b) { return a.artifact_id() < b.artifact_id(); });
  return manifests;
}

absl::StatusOr<std::string> ArtifactStore::Quarantine(const std::string& artifact_id) {
  RETURN_IF_ERROR(ValidateArtifactId(artifact_id));
  const std::string aside =
      absl::StrCat(kQuarantinePrefix, artifact_id, "-", absl::ToUnixSeconds(absl::Now()));
  if (::rename(ArtifactDir(artifact_id).c_str(), absl::StrCat(root_, "/", aside).c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot move artifact ", artifact_id, " aside to ",
                                            aside, ": ", strerror(errno)));
  }
  RETURN_IF_ERROR(FsyncDirectory(root_));
  return aside;
}

absl::StatusOr<int64_t> ArtifactStore::SizeBytes(const std::string& artifact_id) const {
  // Exists refuses a directory that a symlink leads out of the root; links
  // inside it are not the artifact's files either.
  if (!Exists(artifact_id)) return absl::NotFoundError(absl::StrCat("no artifact ", artifact_id));
  int64_t total = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(ArtifactDir(artifact_id), ec)) {
    if (entry.symlink_status(ec).type() == fs::file_type::regular) {
      total += static_cast<int64_t>(entry.file_size(ec));
    }
  }
  if (ec) return absl::NotFoundError(absl::StrCat("no artifact ", artifact_id));
  return total;
}

absl::StatusOr<std::shared_ptr<const LlamaWeights>> ArtifactStore::LoadWeights(
    const std::string& artifact_id, const LoadOptions& options) const {
  ASSIGN_OR_RETURN(v1::ArtifactManifest manifest, ReadManifest(artifact_id));
  // Checksums are verified while the weights are built (the loader checks
  // every size, offset and shape itself, so it is safe on a corrupt file):
  // hashing reads the file once on its own thread, and building is mostly
  // page faults. Nothing is returned unless both succeed. A std::async
  // future waits for its task when an early return destroys it.
  std::future<absl::Status> verified =
      std::async(std::launch::async, [this, &artifact_id] { return Verify(artifact_id); });
  auto load = [&]() -> absl::StatusOr<std::shared_ptr<const LlamaWeights>> {
    const RootedPath dir = ArtifactPath(artifact_id);
    ASSIGN_OR_RETURN(LlamaConfig config, LoadModelDirConfig(dir));
    auto source = std::make_shared<ArtifactSource>();
    RETURN_IF_ERROR(source->Open(dir, manifest, options));
    return BuildLlamaWeights(config, std::move(source));
  };
  absl::StatusOr<std::shared_ptr<const LlamaWeights>> weights = load();
  // Corruption explains a failed load better than the loader's own error.
  RETURN_IF_ERROR(verified.get());
  if (!weights.ok()) return AsArtifactDataLoss(artifact_id, weights.status());
  return weights;
}

}  // namespace wq

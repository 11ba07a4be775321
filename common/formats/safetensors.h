// Reader and writer for the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON describing each tensor, then the raw
// tensor bytes. Files come from disk or the network, so the reader validates
// every size, offset and shape before handing out pointers.
#ifndef WQ_COMMON_SAFETENSORS_H_
#define WQ_COMMON_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/io/file_util.h"

namespace wq {

enum class DType {
  kF32,
  kF16,
  kBF16,
  kF64,
  kI8,
  kU8,
  kI16,
  kU16,
  kI32,
  kU32,
  kI64,
  kU64,
  kBool,
};

// Bytes per element.
size_t DTypeSize(DType dtype);
// The safetensors spelling, e.g. "F32", "BF16", "BOOL".
std::string_view DTypeName(DType dtype);
// Inverse of DTypeName; INVALID_ARGUMENT for anything else (e.g. "F8_E4M3").
absl::StatusOr<DType> ParseDType(std::string_view name);

// Largest header accepted on read; real checkpoints use well under 1 MiB, so
// anything bigger is corrupt or hostile.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{100} << 20;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // Absolute offset in the file.
  uint64_t nbytes = 0;

  int64_t numel() const;
};

// A tensor as fp32: either a view into a SafetensorsFile mapping (`owned`
// empty; valid only while that file is open) or converted values held in
// `owned`. Move-only: moving keeps `data` valid because a moved vector keeps
// its buffer, but a copy would point into the source's storage.
struct F32Tensor {
  std::vector<int64_t> shape;
  const float* data = nullptr;
  std::vector<float> owned;

  F32Tensor() = default;
  F32Tensor(F32Tensor&&) = default;
  F32Tensor& operator=(F32Tensor&&) = default;
  F32Tensor(const F32Tensor&) = delete;
  F32Tensor& operator=(const F32Tensor&) = delete;

  int64_t numel() const;
  absl::Span<const float> values() const {
    return absl::MakeConstSpan(data, static_cast<size_t>(numel()));
  }
};

// How an open SafetensorsFile holds the file's bytes.
enum class FileBacking {
  // A read-only mmap of the file: nothing is read before it is used and
  // processes share the page cache, but truncating the file under the
  // mapping kills the process with SIGBUS at its next read.
  kMapped,
  // Read once into memory the SafetensorsFile owns: private to the process,
  // but nothing later done to the file can reach it.
  kCopied,
};

// One safetensors file, read-only in memory.
class SafetensorsFile {
 public:
  // Maps or copies (`backing`) and validates the file, opened by OpenForRead
  // (whose errors it returns). INVALID_ARGUMENT / DATA_LOSS name the file
  // and the offending tensor.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const RootedPath& file, FileBacking backing = FileBacking::kMapped);

  // A safetensors file's bytes already in memory, copied and validated as
  // Open validates a file; `name` stands for the path in errors.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBytes(std::string name,
                                                                    std::string_view bytes);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // In header order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr if absent.
  const TensorInfo* Find(std::string_view name) const;
  // The tensor if it exists with exactly this dtype and shape: NOT_FOUND or
  // INVALID_ARGUMENT naming the tensor, what was expected and what is there.
  absl::StatusOr<const TensorInfo*> Get(std::string_view name, DType dtype,
                                        absl::Span<const int64_t> shape) const;
  // Pointer to the tensor's first byte inside the mapping; `info` must come
  // from this file.
  const uint8_t* data(const TensorInfo& info) const;
  // Drops this process's mapping of the whole pages inside the tensor (they
  // stay in the page cache and fault back in if read again): for tensors
  // that were copied into another layout, so they stop counting as resident.
  // A kCopied file frees them instead and they read back as zeros: release
  // only tensors that nothing reads again.
  void ReleasePages(const TensorInfo& info) const;
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  // The tensor as fp32: a copy-free view when it is F32 and 4-byte aligned in
  // the mapping, otherwise F32/F16/BF16 converted into owned storage. Other
  // dtypes are INVALID_ARGUMENT.
  absl::StatusOr<F32Tensor> LoadF32(std::string_view name) const;

  uint64_t file_size() const { return file_size_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile(std::string path, const uint8_t* base, uint64_t file_size,
                  FileBacking backing)
      : path_(std::move(path)), base_(base), file_size_(file_size), backing_(backing) {}

  // Checks the header length at base_ and parses the header after it.
  absl::Status Validate();
  absl::Status ParseHeader(std::string_view header, uint64_t data_start);

  std::string path_;
  const uint8_t* base_;
  uint64_t file_size_;
  FileBacking backing_;  // base_ is an mmap of file_size_ bytes either way
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> tensors_ slot
  std::map<std::string, std::string> metadata_;
};

// Builds a safetensors file and writes it in one go: tensors in memory, or,
// for files larger than memory should hold, spilled to a scratch file as they
// are added.
class SafetensorsWriter {
 public:
  SafetensorsWriter() = default;
  // Tensor bytes are appended to `spill_path` (created, truncated) as they
  // are added and copied into place by Write(), which then removes it.
  explicit SafetensorsWriter(std::string spill_path);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Stored under "__metadata__"; a repeated key overwrites.
  void SetMetadata(std::string key, std::string value);
  // INVALID_ARGUMENT if the name is empty, "__metadata__" or already added, a
  // dimension is negative, or bytes.size() != numel * DTypeSize(dtype).
  absl::Status AddTensor(std::string name, DType dtype,
                         std::vector<int64_t> shape, std::string bytes);
  absl::Status AddF32(std::string name, std::vector<int64_t> shape,
                      absl::Span<const float> values);
  // Writes, fsyncs and closes `path`. The header is space-padded so the data
  // starts at a multiple of 64 bytes; tensors are packed without holes, widest
  // element type first (stable), so each is naturally aligned. Not atomic:
  // write to a temporary name and rename to publish.
  absl::Status Write(const std::string& path);

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;        // in memory, or empty when spilled
    uint64_t size = 0;
    uint64_t spill_offset = 0;
  };
  absl::Status Spill(Entry& entry);
  std::vector<Entry> entries_;
  std::set<std::string, std::less<>> names_;
  std::string spill_path_;
  int spill_fd_ = -1;
  uint64_t spill_size_ = 0;
  std::map<std::string, std::string> metadata_;
};

}  // namespace wq

#endif  // WQ_COMMON_SAFETENSORS_H_

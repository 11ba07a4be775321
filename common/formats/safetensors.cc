#include "common/formats/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/formats/bf16.h"
#include "common/io/file_util.h"
#include "common/io/status_macros.h"
#include "nlohmann/json.hpp"

// Tensor bytes are reinterpreted in place, which is only right on
// little-endian hosts (the format is little-endian).
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors support assumes a little-endian host");

namespace wq {
namespace {

using Json = nlohmann::ordered_json;

constexpr DType kAllDTypes[] = {
    DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI8,
    DType::kU8,  DType::kI16, DType::kU16,  DType::kI32, DType::kU32,
    DType::kI64, DType::kU64, DType::kBool,
};

constexpr std::string_view kMetadataKey = "__metadata__";
constexpr uint64_t kWriterAlignment = 64;
// Tensor entries sit at depth 2 ({"name": {"shape": [..]}} reaches 3); deeper
// nesting has no meaning and is dropped while parsing so that a hostile
// header cannot build a huge nested tree.
constexpr int kMaxJsonDepth = 3;

// Abseil here is built with its own string_view type, which StrCat needs.
absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// numel of `shape`, or nullopt-like -1 when a dimension is negative or the
// product overflows int64.
int64_t CheckedNumel(absl::Span<const int64_t> shape) {
  int64_t numel = 1;
  for (int64_t dim : shape) {
    if (dim < 0) return -1;
    if (dim != 0 && numel > std::numeric_limits<int64_t>::max() / dim) {
      return -1;
    }
    numel *= dim;
  }
  return numel;
}

// Reads a JSON integer that must be >= 0 and fit in int64.
bool GetNonNegativeInt(const Json& value, int64_t* out) {
  if (value.is_number_unsigned()) {
    uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return false;
    }
    *out = static_cast<int64_t>(v);
    return true;
  }
  if (value.is_number_integer()) {
    int64_t v = value.get<int64_t>();
    if (v < 0) return false;
    *out = v;
    return true;
  }
  return false;
}

absl::Status CheckHoldsHeaderLength(const std::string& path, uint64_t size) {
  if (size >= 8) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "safetensors file '", path, "' is ", size,
      " bytes, shorter than the 8-byte header length; it is truncated or "
      "not a safetensors file"));
}

absl::Status OpenError(int err, const std::string& path,
                       std::string_view what) {
  std::string message =
      absl::StrCat("safetensors file '", path, "': ", ToAbsl(what),
                   " failed: ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) {
    return absl::PermissionDeniedError(message);
  }
  return absl::InternalError(message);
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF64:
    case DType::kI64:
    case DType::kU64:
      return 8;
    case DType::kF32:
    case DType::kI32:
    case DType::kU32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
    case DType::kI16:
    case DType::kU16:
      return 2;
    case DType::kI8:
    case DType::kU8:
    case DType::kBool:
      return 1;
  }
  return 1;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kF64:
      return "F64";
    case DType::kI8:
      return "I8";
    case DType::kU8:
      return "U8";
    case DType::kI16:
      return "I16";
    case DType::kU16:
      return "U16";
    case DType::kI32:
      return "I32";
    case DType::kU32:
      return "U32";
    case DType::kI64:
      return "I64";
    case DType::kU64:
      return "U64";
    case DType::kBool:
      return "BOOL";
  }
  return "UNKNOWN";
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (DType dtype : kAllDTypes) {
    if (DTypeName(dtype) == name) return dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported dtype '", ToAbsl(name),
      "'; expected one of F32, F16, BF16, F64, I8, U8, I16, U16, I32, U32, "
      "I64, U64, BOOL"));
}

int64_t TensorInfo::numel() const { return CheckedNumel(shape); }

int64_t F32Tensor::numel() const { return CheckedNumel(shape); }

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const RootedPath& file_path, FileBacking backing) {
  const std::string& path = file_path.path;
  ASSIGN_OR_RETURN(ScopedFd owned_fd, OpenForRead(file_path));
  const int fd = owned_fd.get();  // the mapping stays valid after it closes
  struct stat st;
  if (::fstat(fd, &st) != 0) return OpenError(errno, path, "stat");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  RETURN_IF_ERROR(CheckHoldsHeaderLength(path, file_size));
  const bool mapped = backing == FileBacking::kMapped;
  // A copy lives in anonymous pages, so that the destructor unmaps both alike.
  void* mapping = ::mmap(nullptr, file_size, mapped ? PROT_READ : PROT_READ | PROT_WRITE,
                         mapped ? MAP_PRIVATE : MAP_PRIVATE | MAP_ANONYMOUS, mapped ? fd : -1, 0);
  int mmap_errno = errno;
  if (mapping == MAP_FAILED) return OpenError(mmap_errno, path, "mmap");
  // From here the mapping is freed with `file` on every return.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(
      path, static_cast<const uint8_t*>(mapping), file_size, backing));
  if (!mapped) {
    uint8_t* out = static_cast<uint8_t*>(mapping);
    uint64_t done = 0;
    while (done < file_size) {
      const ssize_t n = ::pread(fd, out + done, file_size - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return OpenError(errno, path, "read");
      if (n == 0) {
        return absl::DataLossError(absl::StrCat("safetensors file '", path,
                                                "' shrank while it was read"));
      }
      done += static_cast<uint64_t>(n);
    }
    ::mprotect(mapping, file_size, PROT_READ);  // best effort: a stray write is a bug
  }

  RETURN_IF_ERROR(file->Validate());
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(
    std::string name, std::string_view bytes) {
  RETURN_IF_ERROR(CheckHoldsHeaderLength(name, bytes.size()));
  void* mapping = ::mmap(nullptr, bytes.size(), PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping == MAP_FAILED) return OpenError(errno, name, "mmap");
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(
      std::move(name), static_cast<const uint8_t*>(mapping), bytes.size(), FileBacking::kCopied));
  std::memcpy(mapping, bytes.data(), bytes.size());
  ::mprotect(mapping, bytes.size(), PROT_READ);  // best effort: a stray write is a bug
  RETURN_IF_ERROR(file->Validate());
  return file;
}

absl::Status SafetensorsFile::Validate() {
  uint64_t header_size;
  std::memcpy(&header_size, base_, sizeof(header_size));
  if (header_size > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors file '", path_, "' declares a header of ", header_size,
        " bytes, more than the ", kMaxSafetensorsHeaderBytes,
        "-byte limit; the file is corrupt or not a safetensors file"));
  }
  if (header_size > file_size_ - 8) {
    return absl::DataLossError(
        absl::StrCat("safetensors file '", path_, "' declares a header of ",
                     header_size, " bytes but only ", file_size_ - 8,
                     " bytes follow the length; the file is truncated"));
  }
  std::string_view header(reinterpret_cast<const char*>(base_ + 8), header_size);
  return ParseHeader(header, 8 + header_size);
}

SafetensorsFile::~SafetensorsFile() {
  ::munmap(const_cast<uint8_t*>(base_), file_size_);
}

absl::Status SafetensorsFile::ParseHeader(std::string_view header,
                                          uint64_t data_start) {
  const std::string where = absl::StrCat("safetensors file '", path_, "'");
  bool too_deep = false;
  std::string duplicate_key;
  std::set<std::string> top_level_keys;
  Json::parser_callback_t callback =
      [&](int depth, nlohmann::json::parse_event_t event, Json& parsed) {
        if (depth > kMaxJsonDepth) {
          too_deep = true;
          return false;
        }
        // nlohmann silently keeps one of two equal keys; a header that names a
        // tensor twice is ambiguous, so remember it and reject below.
        if (event == nlohmann::json::parse_event_t::key && depth == 1 &&
            parsed.is_string() &&
            !top_level_keys.insert(parsed.get<std::string>()).second &&
            duplicate_key.empty()) {
          duplicate_key = parsed.get<std::string>();
        }
        return true;
      };
  Json root = Json::parse(header.begin(), header.end(), callback,
                          /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": header is not valid JSON"));
  }
  if (too_deep) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": header JSON nests deeper than ", kMaxJsonDepth,
                     " levels; expected {name: {dtype, shape, data_offsets}}"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": header JSON must be an object, got ", root.type_name()));
  }
  if (!duplicate_key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": header names '", duplicate_key, "' more than once"));
  }

  const uint64_t data_size = file_size_ - data_start;
  for (const auto& [name, entry] : root.items()) {
    if (name == kMetadataKey) {
      if (!entry.is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": __metadata__ must be an object of strings, got ",
            entry.type_name()));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": __metadata__ value for '", key,
                           "' must be a string, got ", value.type_name()));
        }
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string tensor_where =
        absl::StrCat(where, " tensor '", name, "'");
    if (!entry.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          tensor_where, ": entry must be an object, got ", entry.type_name()));
    }
    TensorInfo info;
    info.name = name;

    auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(tensor_where, ": missing string field 'dtype'"));
    }
    absl::StatusOr<DType> dtype = ParseDType(dtype_it->get<std::string>());
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(tensor_where, ": ", dtype.status().message()));
    }
    info.dtype = *dtype;

    auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(tensor_where, ": missing array field 'shape'"));
    }
    for (const Json& dim : *shape_it) {
      int64_t value;
      if (!GetNonNegativeInt(dim, &value)) {
        return absl::InvalidArgumentError(
            absl::StrCat(tensor_where, ": shape ", shape_it->dump(),
                         " must contain only non-negative integers"));
      }
      info.shape.push_back(value);
    }
    const int64_t numel = CheckedNumel(info.shape);
    const uint64_t element_size = DTypeSize(info.dtype);
    if (numel < 0 || static_cast<uint64_t>(numel) >
                         std::numeric_limits<uint64_t>::max() / element_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(tensor_where, ": shape ", ShapeString(info.shape),
                       " has too many elements (size overflows 64 bits)"));
    }
    info.nbytes = static_cast<uint64_t>(numel) * element_size;

    auto offsets_it = entry.find("data_offsets");
    int64_t begin = 0;
    int64_t end = 0;
    if (offsets_it == entry.end() || !offsets_it->is_array() ||
        offsets_it->size() != 2 ||
        !GetNonNegativeInt((*offsets_it)[0], &begin) ||
        !GetNonNegativeInt((*offsets_it)[1], &end)) {
      return absl::InvalidArgumentError(absl::StrCat(
          tensor_where,
          ": 'data_offsets' must be [begin, end] with non-negative integers"));
    }
    if (begin > end) {
      return absl::InvalidArgumentError(
          absl::StrCat(tensor_where, ": data_offsets begin ", begin,
                       " is greater than end ", end));
    }
    if (static_cast<uint64_t>(end) > data_size) {
      return absl::DataLossError(absl::StrCat(
          tensor_where, ": data_offsets end ", end, " is beyond the ",
          data_size, "-byte data buffer; the file is truncated or corrupt"));
    }
    if (static_cast<uint64_t>(end - begin) != info.nbytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          tensor_where, ": data_offsets [", begin, ", ", end, "] span ",
          end - begin, " bytes but ", ToAbsl(DTypeName(info.dtype)), " shape ",
          ShapeString(info.shape), " needs ", info.nbytes));
    }
    info.offset = data_start + static_cast<uint64_t>(begin);
    index_.emplace(info.name, tensors_.size());
    tensors_.push_back(std::move(info));
  }

  // Empty tensors occupy no bytes, so only non-empty ones can overlap.
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& info : tensors_) {
    if (info.nbytes > 0) by_offset.push_back(&info);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) {
              return a->offset < b->offset;
            });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& previous = *by_offset[i - 1];
    const TensorInfo& current = *by_offset[i];
    if (previous.offset + previous.nbytes > current.offset) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tensors '", previous.name, "' and '",
                       current.name, "' overlap in the data buffer"));
    }
  }
  return absl::OkStatus();
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<const TensorInfo*> SafetensorsFile::Get(
    std::string_view name, DType dtype, absl::Span<const int64_t> shape) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("tensor '", ToAbsl(name),
                                            "' not found in safetensors file '",
                                            path_, "'"));
  }
  if (info->dtype != dtype ||
      !std::equal(info->shape.begin(), info->shape.end(), shape.begin(),
                  shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", ToAbsl(name), "' in '", path_, "': expected ",
        ToAbsl(DTypeName(dtype)), " ", ShapeString(shape), ", found ",
        ToAbsl(DTypeName(info->dtype)), " ", ShapeString(info->shape)));
  }
  return info;
}

const uint8_t* SafetensorsFile::data(const TensorInfo& info) const {
  return base_ + info.offset;
}

void SafetensorsFile::ReleasePages(const TensorInfo& info) const {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data(info));
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = (begin + info.nbytes) / page * page;
  // Advisory: on failure the pages simply stay mapped.
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

absl::StatusOr<F32Tensor> SafetensorsFile::LoadF32(
    std::string_view name) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("tensor '", ToAbsl(name),
                                            "' not found in safetensors file '",
                                            path_, "'"));
  }
  F32Tensor tensor;
  tensor.shape = info->shape;
  const uint8_t* bytes = data(*info);
  const size_t numel = static_cast<size_t>(info->numel());
  switch (info->dtype) {
    case DType::kF32:
      if (reinterpret_cast<uintptr_t>(bytes) % alignof(float) == 0) {
        tensor.data = reinterpret_cast<const float*>(bytes);
        return tensor;
      }
      tensor.owned.resize(numel);
      std::memcpy(tensor.owned.data(), bytes, info->nbytes);
      break;
    case DType::kF16:
    case DType::kBF16: {
      tensor.owned.resize(numel);
      const bool is_f16 = info->dtype == DType::kF16;
      for (size_t i = 0; i < numel; ++i) {
        uint16_t raw;
        std::memcpy(&raw, bytes + 2 * i, sizeof(raw));
        tensor.owned[i] = is_f16 ? F16ToFloat(raw) : Bf16ToFloat(raw);
      }
      break;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", ToAbsl(name), "' in '", path_, "' is ",
                       ToAbsl(DTypeName(info->dtype)),
                       "; only F32, F16 and BF16 can be loaded as fp32"));
  }
  tensor.data = tensor.owned.data();
  return tensor;
}

SafetensorsWriter::SafetensorsWriter(std::string spill_path)
    : spill_path_(std::move(spill_path)) {}

SafetensorsWriter::~SafetensorsWriter() {
  if (spill_fd_ >= 0) {
    ::close(spill_fd_);
    ::unlink(spill_path_.c_str());
  }
}

absl::Status SafetensorsWriter::Spill(Entry& entry) {
  if (spill_fd_ < 0) {
    spill_fd_ = ::open(spill_path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (spill_fd_ < 0) {
      return absl::InternalError(absl::StrCat("cannot create ", PathForMessage(spill_path_), ": ",
                                              std::strerror(errno)));
    }
  }
  entry.spill_offset = spill_size_;
  uint64_t done = 0;
  while (done < entry.size) {
    const ssize_t n = ::pwrite(spill_fd_, entry.bytes.data() + done, entry.size - done,
                               static_cast<off_t>(entry.spill_offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::InternalError(absl::StrCat("cannot write ", PathForMessage(spill_path_), ": ",
                                              std::strerror(errno)));
    }
    done += static_cast<uint64_t>(n);
  }
  spill_size_ += entry.size;
  std::string().swap(entry.bytes);
  return absl::OkStatus();
}

void SafetensorsWriter::SetMetadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

absl::Status SafetensorsWriter::AddTensor(std::string name, DType dtype,
                                          std::vector<int64_t> shape,
                                          std::string bytes) {
  if (name.empty() || name == kMetadataKey) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid tensor name '", name, "'; use a non-empty name other than ",
        ToAbsl(kMetadataKey)));
  }
  if (names_.count(name) > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "' was already added"));
  }
  const int64_t numel = CheckedNumel(shape);
  if (numel < 0 ||
      static_cast<uint64_t>(numel) >
          std::numeric_limits<uint64_t>::max() / DTypeSize(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': shape ", ShapeString(shape),
                     " has a negative dimension or too many elements"));
  }
  const uint64_t expected = static_cast<uint64_t>(numel) * DTypeSize(dtype);
  if (bytes.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "': ", ToAbsl(DTypeName(dtype)), " shape ",
        ShapeString(shape), " needs ", expected, " bytes, got ", bytes.size()));
  }
  names_.insert(name);
  const uint64_t size = bytes.size();
  entries_.push_back(Entry{std::move(name), dtype, std::move(shape), std::move(bytes), size});
  if (!spill_path_.empty()) return Spill(entries_.back());
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AddF32(std::string name,
                                       std::vector<int64_t> shape,
                                       absl::Span<const float> values) {
  std::string bytes(reinterpret_cast<const char*>(values.data()),
                    values.size() * sizeof(float));
  return AddTensor(std::move(name), DType::kF32, std::move(shape),
                   std::move(bytes));
}

absl::Status SafetensorsWriter::Write(const std::string& path) {
  std::vector<const Entry*> order;
  order.reserve(entries_.size());
  for (const Entry& entry : entries_) order.push_back(&entry);
  std::stable_sort(order.begin(), order.end(),
                   [](const Entry* a, const Entry* b) {
                     return DTypeSize(a->dtype) > DTypeSize(b->dtype);
                   });

  Json header = Json::object();
  if (!metadata_.empty()) {
    Json metadata = Json::object();
    for (const auto& [key, value] : metadata_) metadata[key] = value;
    header[std::string(kMetadataKey)] = std::move(metadata);
  }
  uint64_t offset = 0;
  for (const Entry* entry : order) {
    Json tensor = Json::object();
    tensor["dtype"] = std::string(DTypeName(entry->dtype));
    tensor["shape"] = entry->shape;
    tensor["data_offsets"] = {offset, offset + entry->size};
    header[entry->name] = std::move(tensor);
    offset += entry->size;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::type_error& error) {
    // dump() throws only for strings that are not valid UTF-8.
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write safetensors file '", path,
                     "': a tensor name or metadata string is not valid UTF-8 (",
                     error.what(), ")"));
  }
  const uint64_t unpadded = 8 + header_text.size();
  const uint64_t padded =
      (unpadded + kWriterAlignment - 1) / kWriterAlignment * kWriterAlignment;
  header_text.append(padded - unpadded, ' ');

  char length_bytes[8];
  const uint64_t header_size = header_text.size();
  std::memcpy(length_bytes, &header_size, sizeof(length_bytes));
  std::vector<std::string_view> pieces;
  pieces.reserve(order.size() + 2);
  pieces.emplace_back(length_bytes, sizeof(length_bytes));
  pieces.emplace_back(header_text);
  if (spill_fd_ < 0) {
    for (const Entry* entry : order) pieces.emplace_back(entry->bytes);
    return WriteFileDurably(path, pieces);
  }
  RETURN_IF_ERROR(WriteFileDurably(path, pieces));
  // copy_file_range refuses O_APPEND outputs: the data goes after the header.
  const int out = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (out < 0) {
    return absl::InternalError(absl::StrCat("cannot open ", PathForMessage(path), ": ", std::strerror(errno)));
  }
  absl::Status status = absl::OkStatus();
  loff_t to = static_cast<loff_t>(sizeof(length_bytes) + header_text.size());
  for (const Entry* entry : order) {
    loff_t from = static_cast<loff_t>(entry->spill_offset);
    uint64_t remaining = entry->size;
    while (remaining > 0 && status.ok()) {
      const ssize_t n = ::copy_file_range(spill_fd_, &from, out, &to, remaining, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        status = absl::InternalError(absl::StrCat("cannot copy ", PathForMessage(spill_path_), " into ", PathForMessage(path),
                                                  ": ", std::strerror(errno)));
      } else {
        remaining -= static_cast<uint64_t>(n);
      }
    }
  }
  if (status.ok() && ::fsync(out) != 0) {
    status = absl::InternalError(absl::StrCat("cannot fsync ", PathForMessage(path), ": ", std::strerror(errno)));
  }
  if (::close(out) != 0 && status.ok()) {
    status = absl::InternalError(absl::StrCat("cannot close ", PathForMessage(path), ": ", std::strerror(errno)));
  }
  ::close(spill_fd_);
  spill_fd_ = -1;
  ::unlink(spill_path_.c_str());
  return status;
}

}  // namespace wq

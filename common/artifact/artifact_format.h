// How an artifact stores the model's tensors in model.safetensors: the
// tensor names, the layout of each quantized linear, the manifest entry that
// describes it and the format version that covers it. The quantizer writes
// with EncodeQuantizedLinear and the store reads with ReadQuantizedLinear;
// both take the tensors of a layout from one list in artifact_format.cc, so
// writer and reader cannot disagree.
//
// A quantized linear <module> is stored in one layout (ManifestTensor.layout):
//  - "rowmajor-packed-v1": codes <module>.qweight (U8 [rows, row_bytes],
//    quant_format.h Packing); scales as ScaleEncoding stores them:
//      fp32          <module>.scales       F32  [rows, groups]
//      bf16          <module>.scales       BF16 [rows, groups]
//      double quant  <module>.scales_q     U8   [rows, groups] (int8 sym
//                                          codes, level = code - 128)
//                    <module>.scales_scale F32  [ceil(rows * groups / 256)]
//                    <module>.scales_mean  F32  [1] (asym only)
//                    scale = level * scales_scale[i / 256] + mean;
//    zero points <module>.qzeros (U8 [rows, groups], asym only).
//  - "int8-tiles-v1" (fp32 scales), "int8-tiles-bf16-v1" (bf16 scales):
//    <module>.qweight_tiles (U8 [bytes]), codes, scales and zero points in
//    the int8 kernels' layout (common/kernels/int8_tiles.h), used in place
//    by int8 compute. Written for compute_dtype int8 where the layout holds
//    the weights (whole groups of whole 32-blocks of a format with an int8
//    kernel); the bf16 variant has its own name so that a reader that
//    predates it refuses it instead of misreading 2-byte scales as 4.
// An unquantized linear is <module>.weight (F32 [rows, cols]); the other
// fp32 tensors (embedding, norms, biases) keep their checkpoint names.
#ifndef WQ_COMMON_ARTIFACT_FORMAT_H_
#define WQ_COMMON_ARTIFACT_FORMAT_H_

#include <cstdint>
#include <iterator>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/formats/compute_dtype.h"
#include "common/formats/quant_format.h"
#include "common/formats/safetensors.h"
#include "wq/v1/artifact.pb.h"

namespace wq {

inline constexpr char kArtifactFormat[] = "wq.artifact";

// The newest format version: what this build reads up to and writes for
// artifacts that need it.
inline constexpr int kArtifactFormatVersion = 3;

// Every format version, oldest first: what each holds that the version
// before could not (a reader of that one would misread or refuse it). This
// build reads all of them.
struct FormatVersionInfo {
  int version;
  const char* adds;
};
inline constexpr FormatVersionInfo kFormatVersionHistory[] = {
    {1, "rowmajor-packed-v1 linears of int8, int4, nf4 and fp4 codes with fp32 scales"},
    {2, "int3 and int2 codes; bf16 scales (scale_dtype) and double-quantized scales "
        "(double_quant: .scales_q, .scales_scale, .scales_mean); clip_ratio"},
    {3, "linears in the int8 kernels' tile layout, int8-tiles-v1 and int8-tiles-bf16-v1 "
        "(.qweight_tiles)"},
};
static_assert(std::size(kFormatVersionHistory) == kArtifactFormatVersion &&
              kFormatVersionHistory[kArtifactFormatVersion - 1].version == kArtifactFormatVersion);

// The oldest version a writer marks: every artifact since version 2 records
// its clip_ratio and scale_dtype, and the same config keeps writing the same
// manifest.
inline constexpr int kOldestWrittenFormatVersion = 2;

inline constexpr char kRowMajorPackedLayout[] = "rowmajor-packed-v1";
inline constexpr char kInt8TilesLayout[] = "int8-tiles-v1";
inline constexpr char kInt8TilesBf16Layout[] = "int8-tiles-bf16-v1";

// The oldest format version that holds `tensor` (its layout, weight dtype
// and scale encoding).
int FormatVersionNeeded(const v1::ManifestTensor& tensor);

// The version a writer marks a manifest with: the newest its tensors need,
// and kOldestWrittenFormatVersion at least.
int FormatVersionToWrite(const v1::ArtifactManifest& manifest);

// Whether this build reads `manifest`: FAILED_PRECONDITION for a newer
// version (upgrade the server), DATA_LOSS for an invalid one or a tensor
// that its version cannot hold.
absl::Status CheckFormatVersion(const v1::ArtifactManifest& manifest);

// The tensor name of an unquantized module's weight (its checkpoint name).
std::string DenseWeightName(absl::string_view module);

// The manifest entry of an fp32 tensor stored under its checkpoint name: it
// lists it by its module (the name without ".weight") or, for a bias, by its
// full name.
v1::ManifestTensor DenseTensorEntry(absl::string_view tensor, absl::Span<const int64_t> shape);

// One tensor of model.safetensors as the writer adds it.
struct ArtifactTensor {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  std::string bytes;
};

// A quantized linear as an artifact stores it: its manifest entry and its
// tensors, in the order the writer adds them.
struct EncodedLinear {
  v1::ManifestTensor entry;
  std::vector<ArtifactTensor> tensors;
};

// `q` of `module` in the layout of an artifact computed with `compute`: an
// int8 tile layout for int8 compute where one holds q, else row-major.
absl::StatusOr<EncodedLinear> EncodeQuantizedLinear(const std::string& module,
                                                    const QuantizedMatrix& q,
                                                    ComputeDtype compute);

// A quantized linear read back from an artifact. `view` has its shape and
// spec and, in the row-major layout, points at its codes, scales and zeros;
// in a tile layout `tiles` points at its tiles instead
// (Int8TileGeometryOf(view)->bytes() bytes) and view's pointers are null.
// Move-only: view.scales may point into decoded_scales.
struct StoredLinear {
  QuantizedMatrixView view;
  const uint8_t* tiles = nullptr;
  // The file's tensors that view or tiles point into: their pages can go
  // once the kernels hold a copy of them.
  std::vector<const TensorInfo*> in_place;
  // Scales decoded from bf16 or double quant, which view.scales points at;
  // empty when the file's fp32 scales are used in place.
  std::vector<float> decoded_scales;

  StoredLinear() = default;
  StoredLinear(StoredLinear&&) = default;
  StoredLinear& operator=(StoredLinear&&) = default;
  StoredLinear(const StoredLinear&) = delete;
  StoredLinear& operator=(const StoredLinear&) = delete;
};

// The quantized linear `entry` describes, [rows, cols] as the model expects
// it, from `file` (untrusted: every tensor's dtype and shape, the entry's
// fields and the row-major data are checked). FAILED_PRECONDITION for a
// layout this build does not know, DATA_LOSS or the file's NOT_FOUND /
// INVALID_ARGUMENT for damage.
absl::StatusOr<StoredLinear> ReadQuantizedLinear(const SafetensorsFile& file,
                                                 const v1::ManifestTensor& entry, int64_t rows,
                                                 int64_t cols);

}  // namespace wq

#endif  // WQ_COMMON_ARTIFACT_FORMAT_H_

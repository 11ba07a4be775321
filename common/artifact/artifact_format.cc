#include "common/artifact/artifact_format.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/formats/bf16.h"
#include "common/formats/quant_config.h"
#include "common/io/status_macros.h"
#include "common/kernels/int8_tiles.h"
#include "common/kernels/matmul.h"

namespace wq {
namespace {

constexpr char kDenseWeightSuffix[] = ".weight";

// A layout of quantized linears that this build reads and writes.
struct QuantizedLayout {
  const char* name;  // ManifestTensor.layout
  int since_version;
  bool int8_tiles;            // the int8 kernels' tiles instead of row-major codes
  ScaleEncoding tile_scales;  // int8 tiles only: the scales they hold
};
constexpr QuantizedLayout kQuantizedLayouts[] = {
    {kRowMajorPackedLayout, 1, false, ScaleEncoding::kF32},
    {kInt8TilesLayout, 3, true, ScaleEncoding::kF32},
    {kInt8TilesBf16Layout, 3, true, ScaleEncoding::kBf16},
};

const QuantizedLayout* FindLayout(absl::string_view name) {
  for (const QuantizedLayout& layout : kQuantizedLayouts) {
    if (name == layout.name) return &layout;
  }
  return nullptr;
}

// The tile layout of weights with these scales, or nullptr: the tiles have
// no room for double-quantized scales.
const QuantizedLayout* TileLayoutFor(ScaleEncoding scales) {
  for (const QuantizedLayout& layout : kQuantizedLayouts) {
    if (layout.int8_tiles && layout.tile_scales == scales) return &layout;
  }
  return nullptr;
}

// What one tensor of a quantized linear holds.
enum class Part { kCodes, kScales, kScaleCodes, kScaleBlockScales, kScaleMean, kZeros, kTiles };

struct PartTensor {
  Part part;
  const char* suffix;  // after the module's name
  DType dtype;
  std::vector<int64_t> shape;
};

// The tensors of a quantized linear of m's shape and spec in `layout`, in
// the order the writer adds them: the one list the writer and the reader
// both follow. DATA_LOSS when the layout cannot hold such a linear.
absl::StatusOr<std::vector<PartTensor>> PartTensors(const QuantizedMatrixView& m,
                                                    const QuantizedLayout& layout) {
  if (layout.int8_tiles) {
    if (m.spec.scale_encoding != layout.tile_scales) {
      return absl::DataLossError(
          absl::StrCat("is in ", layout.name, ", which does not hold its scale dtype"));
    }
    const std::optional<kernels::Int8TileGeometry> tiles = Int8TileGeometryOf(m);
    if (!tiles.has_value()) {
      return absl::DataLossError(
          absl::StrCat("has a format and shape with no ", layout.name, " layout"));
    }
    return std::vector<PartTensor>{{Part::kTiles, ".qweight_tiles", DType::kU8, {tiles->bytes()}}};
  }
  const std::vector<int64_t> groups = {m.rows, m.groups_per_row};
  const bool asym = m.spec.scheme == QuantScheme::kAsym;
  std::vector<PartTensor> parts = {{Part::kCodes, ".qweight", DType::kU8, {m.rows, m.row_bytes}}};
  switch (m.spec.scale_encoding) {
    case ScaleEncoding::kF32:
      parts.push_back({Part::kScales, ".scales", DType::kF32, groups});
      break;
    case ScaleEncoding::kBf16:
      parts.push_back({Part::kScales, ".scales", DType::kBF16, groups});
      break;
    case ScaleEncoding::kDoubleQuant: {
      const int64_t scales = m.rows * m.groups_per_row;
      const int64_t blocks = (scales + kDoubleQuantBlock - 1) / kDoubleQuantBlock;
      parts.push_back({Part::kScaleCodes, ".scales_q", DType::kU8, groups});
      parts.push_back({Part::kScaleBlockScales, ".scales_scale", DType::kF32, {blocks}});
      if (asym) parts.push_back({Part::kScaleMean, ".scales_mean", DType::kF32, {1}});
      break;
    }
  }
  if (asym) parts.push_back({Part::kZeros, ".qzeros", DType::kU8, groups});
  return parts;
}

template <typename T>
std::string AsBytes(absl::Span<const T> values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

// The bytes of one part of `q`.
absl::StatusOr<std::string> PartBytes(const QuantizedMatrix& q, Part part) {
  const bool double_quant =
      part == Part::kScaleCodes || part == Part::kScaleBlockScales || part == Part::kScaleMean;
  if (double_quant && !q.double_quant.has_value()) {
    return absl::InternalError("double-quantized scales are missing");
  }
  switch (part) {
    case Part::kTiles:
      return Int8Tiles(q.view());
    case Part::kCodes:
      return AsBytes<uint8_t>(q.codes);
    case Part::kZeros:
      return AsBytes<uint8_t>(q.zeros);
    case Part::kScales: {
      if (q.spec.scale_encoding == ScaleEncoding::kF32) return AsBytes<float>(q.scales);
      std::vector<uint16_t> bf16(q.scales.size());
      std::transform(q.scales.begin(), q.scales.end(), bf16.begin(), FloatToBf16);
      return AsBytes<uint16_t>(bf16);
    }
    case Part::kScaleCodes:
      return AsBytes<uint8_t>(q.double_quant->codes);
    case Part::kScaleBlockScales:
      return AsBytes<float>(q.double_quant->block_scales);
    case Part::kScaleMean:
      return AsBytes<float>(absl::MakeConstSpan(&q.double_quant->mean, 1));
  }
  return absl::InternalError("unknown tensor part");
}

absl::StatusOr<ScaleEncoding> ScaleEncodingOf(const v1::ManifestTensor& t) {
  const bool f32 = t.scale_dtype() == v1::SCALE_DTYPE_UNSPECIFIED ||  // version 1
                   t.scale_dtype() == v1::SCALE_FP32;
  if (t.double_quant() && f32) return ScaleEncoding::kDoubleQuant;
  if (!t.double_quant() && f32) return ScaleEncoding::kF32;
  if (!t.double_quant() && t.scale_dtype() == v1::SCALE_BF16) return ScaleEncoding::kBf16;
  return absl::DataLossError(absl::StrCat("has scale_dtype ", t.scale_dtype(),
                                          " with double_quant ", t.double_quant() ? "on" : "off"));
}

// The shape and spec of the linear `t` describes, [rows, cols] as the model
// expects it.
absl::StatusOr<QuantizedMatrixView> ViewOf(const v1::ManifestTensor& t, int64_t rows,
                                           int64_t cols) {
  if (t.shape_size() != 2 || t.shape(0) != rows || t.shape(1) != cols) {
    return absl::DataLossError(absl::StrCat("has shape [", absl::StrJoin(t.shape(), ", "),
                                            "], the model's is [", rows, ", ", cols, "]"));
  }
  if (!v1::WeightDtype_IsValid(t.weight_dtype()) ||
      t.weight_dtype() == v1::WEIGHT_DTYPE_UNSPECIFIED) {
    return absl::DataLossError("has no valid weight_dtype");
  }
  if (t.group_size() < 1) {
    return absl::DataLossError(absl::StrCat("has group_size ", t.group_size()));
  }
  QuantizedMatrixView view;
  view.spec.type = QuantTypeOf(t.weight_dtype());
  view.spec.scheme = QuantSchemeOf(t.scheme());
  view.spec.group_size = t.group_size();
  ASSIGN_OR_RETURN(view.spec.scale_encoding, ScaleEncodingOf(t));
  if (absl::Status spec = ValidateQuantSpec(view.spec); !spec.ok()) {
    return absl::DataLossError(spec.message());
  }
  view.rows = rows;
  view.cols = cols;
  view.group_size = EffectiveGroupSize(view.spec, cols);
  view.groups_per_row = (cols + view.group_size - 1) / view.group_size;
  view.row_bytes = (cols * GetQuantFormat(view.spec.type).bits + 7) / 8;
  return view;
}

// Copies a tensor's values out, so that its alignment in the file does not
// matter; for the small scale tensors only.
template <typename T>
std::vector<T> CopyValues(const SafetensorsFile& file, const TensorInfo& t) {
  std::vector<T> out(t.nbytes / sizeof(T));
  std::memcpy(out.data(), file.data(t), out.size() * sizeof(T));
  return out;
}

// Points stored.view (or stored.tiles) at the parts read from the file, or
// decodes the scales into stored.decoded_scales.
absl::Status Assemble(const SafetensorsFile& file, const std::vector<PartTensor>& parts,
                      const std::vector<const TensorInfo*>& tensors, StoredLinear& stored) {
  QuantizedMatrixView& view = stored.view;
  std::vector<uint8_t> scale_codes;
  std::vector<float> block_scales;
  float mean = 0.0f;
  for (size_t i = 0; i < parts.size(); ++i) {
    const TensorInfo& t = *tensors[i];
    switch (parts[i].part) {
      case Part::kTiles:
        stored.tiles = file.data(t);
        stored.in_place.push_back(&t);
        break;
      case Part::kCodes:
        view.codes = file.data(t);
        stored.in_place.push_back(&t);
        break;
      case Part::kZeros:
        view.zeros = file.data(t);
        stored.in_place.push_back(&t);
        break;
      case Part::kScales:
        if (t.dtype == DType::kBF16) {
          const std::vector<uint16_t> bf16 = CopyValues<uint16_t>(file, t);
          stored.decoded_scales.resize(bf16.size());
          std::transform(bf16.begin(), bf16.end(), stored.decoded_scales.begin(), Bf16ToFloat);
        } else if (t.offset % alignof(float) != 0) {
          return absl::DataLossError(absl::StrCat("tensor ", t.name, " is not 4-byte aligned"));
        } else {
          view.scales = reinterpret_cast<const float*>(file.data(t));
          stored.in_place.push_back(&t);
        }
        break;
      case Part::kScaleCodes:
        scale_codes = CopyValues<uint8_t>(file, t);
        break;
      case Part::kScaleBlockScales:
        block_scales = CopyValues<float>(file, t);
        break;
      case Part::kScaleMean:
        mean = CopyValues<float>(file, t)[0];
        break;
    }
  }
  if (view.spec.scale_encoding == ScaleEncoding::kDoubleQuant) {
    stored.decoded_scales.resize(scale_codes.size());
    RETURN_IF_ERROR(DequantizeDoubleQuantizedScales(scale_codes, block_scales, mean,
                                                    absl::MakeSpan(stored.decoded_scales)));
  }
  if (view.scales == nullptr && stored.tiles == nullptr) view.scales = stored.decoded_scales.data();
  return absl::OkStatus();
}

}  // namespace

int FormatVersionNeeded(const v1::ManifestTensor& tensor) {
  if (!tensor.quantized()) return 1;
  // A layout this build does not know is refused by name when loaded.
  const QuantizedLayout* layout = FindLayout(tensor.layout());
  int version = layout != nullptr ? layout->since_version : 1;
  // Version 2's weight dtypes and scale encodings.
  if (tensor.weight_dtype() == v1::INT3 || tensor.weight_dtype() == v1::INT2 ||
      tensor.scale_dtype() == v1::SCALE_BF16 || tensor.double_quant()) {
    version = std::max(version, 2);
  }
  return version;
}

int FormatVersionToWrite(const v1::ArtifactManifest& manifest) {
  int version = kOldestWrittenFormatVersion;
  for (const v1::ManifestTensor& t : manifest.tensors()) {
    version = std::max(version, FormatVersionNeeded(t));
  }
  return version;
}

absl::Status CheckFormatVersion(const v1::ArtifactManifest& manifest) {
  const int version = manifest.format_version();
  if (version > kArtifactFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("format version ", version, " is newer than this server reads (up to ",
                     kArtifactFormatVersion, "): upgrade the server"));
  }
  if (version < kFormatVersionHistory[0].version) {
    return absl::DataLossError(absl::StrCat("invalid format version ", version));
  }
  for (const v1::ManifestTensor& t : manifest.tensors()) {
    if (const int needed = FormatVersionNeeded(t); needed > version) {
      return absl::DataLossError(absl::StrCat("tensor ", t.module(), " needs format version ",
                                              needed, ", the manifest says ", version));
    }
  }
  return absl::OkStatus();
}

std::string DenseWeightName(absl::string_view module) {
  return absl::StrCat(module, kDenseWeightSuffix);
}

v1::ManifestTensor DenseTensorEntry(absl::string_view tensor, absl::Span<const int64_t> shape) {
  v1::ManifestTensor entry;
  entry.set_module(std::string(absl::StripSuffix(tensor, kDenseWeightSuffix)));
  for (int64_t d : shape) entry.add_shape(d);
  return entry;
}

absl::StatusOr<EncodedLinear> EncodeQuantizedLinear(const std::string& module,
                                                    const QuantizedMatrix& q,
                                                    ComputeDtype compute) {
  const QuantizedMatrixView view = q.view();
  const QuantizedLayout* tiles = TileLayoutFor(q.spec.scale_encoding);
  const bool tiled = compute == ComputeDtype::kInt8 && tiles != nullptr &&
                     Int8TileGeometryOf(view).has_value();
  const QuantizedLayout& layout = tiled ? *tiles : *FindLayout(kRowMajorPackedLayout);
  EncodedLinear out;
  v1::ManifestTensor& t = out.entry;
  t.set_module(module);
  t.add_shape(q.rows);
  t.add_shape(q.cols);
  t.set_quantized(true);
  t.set_layout(layout.name);
  t.set_weight_dtype(WeightDtypeOf(q.spec.type));
  t.set_scheme(SchemeOf(q.spec.scheme));
  t.set_group_size(q.group_size);
  t.set_clip_ratio(q.spec.quantile);
  t.set_scale_dtype(q.spec.scale_encoding == ScaleEncoding::kBf16 ? v1::SCALE_BF16
                                                                  : v1::SCALE_FP32);
  t.set_double_quant(q.spec.scale_encoding == ScaleEncoding::kDoubleQuant);
  ASSIGN_OR_RETURN(const std::vector<PartTensor> parts, PartTensors(view, layout));
  for (const PartTensor& part : parts) {
    ASSIGN_OR_RETURN(std::string bytes, PartBytes(q, part.part));
    out.tensors.push_back({module + part.suffix, part.dtype, part.shape, std::move(bytes)});
  }
  return out;
}

absl::StatusOr<StoredLinear> ReadQuantizedLinear(const SafetensorsFile& file,
                                                 const v1::ManifestTensor& entry, int64_t rows,
                                                 int64_t cols) {
  const std::string& module = entry.module();
  const QuantizedLayout* layout = FindLayout(entry.layout());
  if (layout == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tensor ", module, " uses layout '", entry.layout(), "', which this version cannot read"));
  }
  auto damaged = [&](const absl::Status& status) {
    return absl::DataLossError(absl::StrCat("tensor ", module, " ", status.message()));
  };
  StoredLinear stored;
  absl::StatusOr<QuantizedMatrixView> view = ViewOf(entry, rows, cols);
  if (!view.ok()) return damaged(view.status());
  stored.view = *view;
  absl::StatusOr<std::vector<PartTensor>> parts = PartTensors(stored.view, *layout);
  if (!parts.ok()) return damaged(parts.status());
  std::vector<const TensorInfo*> tensors;
  for (const PartTensor& part : *parts) {
    ASSIGN_OR_RETURN(const TensorInfo* t, file.Get(module + part.suffix, part.dtype, part.shape));
    tensors.push_back(t);
  }
  RETURN_IF_ERROR(Assemble(file, *parts, tensors, stored));
  if (stored.tiles != nullptr) return stored;
  // The sizes are the shapes Get checked; what is left to check is the data.
  const QuantizedMatrixView& v = stored.view;
  const size_t zeros = v.zeros != nullptr ? static_cast<size_t>(v.rows * v.groups_per_row) : 0;
  RETURN_IF_ERROR(ValidateQuantizedMatrixView(v, static_cast<size_t>(v.rows * v.row_bytes),
                                              static_cast<size_t>(v.rows * v.groups_per_row),
                                              zeros));
  return stored;
}

}  // namespace wq

// The artifact format module: every layout of a quantized linear (each scale
// encoding, sym and asym, int8 tiles and row-major) written with
// EncodeQuantizedLinear and read back with ReadQuantizedLinear through a
// real safetensors file, the tile geometry pinned to its bytes, and the
// version checks of the compatibility table.
#include "common/artifact/artifact_format.h"

#include <cstring>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/formats/compute_dtype.h"
#include "common/formats/quant_format.h"
#include "common/formats/safetensors.h"
#include "common/kernels/int8_tiles.h"
#include "common/kernels/matmul.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace wq {
namespace {

// N(0, 0.02), a trained layer's scale.
std::vector<float> RandomWeights(int64_t n) {
  std::vector<float> w = test::RandomVector(n, 7);
  for (float& v : w) v *= 0.02f;
  return w;
}

struct LayoutCase {
  QuantType type;
  QuantScheme scheme;
  ScaleEncoding scales;
  ComputeDtype compute;
  int64_t cols;
  const char* layout;                   // expected ManifestTensor.layout
  std::set<std::string> tensor_suffixes;  // expected tensors after the module name
};

std::string CaseName(const LayoutCase& c) {
  const char* scales[] = {"f32", "bf16", "dq"};
  return absl::StrCat(std::string(GetQuantFormat(c.type).name),
                      c.scheme == QuantScheme::kAsym ? " asym" : " sym", " scales ",
                      scales[static_cast<int>(c.scales)], " compute ",
                      std::string(ComputeDtypeName(c.compute)), " cols ", c.cols);
}

std::vector<LayoutCase> AllLayoutCases() {
  using S = std::set<std::string>;
  const S f32_sym = {".qweight", ".scales"};
  const S f32_asym = {".qweight", ".scales", ".qzeros"};
  const S dq_sym = {".qweight", ".scales_q", ".scales_scale"};
  const S dq_asym = {".qweight", ".scales_q", ".scales_scale", ".scales_mean", ".qzeros"};
  const S tiles = {".qweight_tiles"};
  std::vector<LayoutCase> cases;
  for (QuantScheme scheme : {QuantScheme::kSym, QuantScheme::kAsym}) {
    const bool asym = scheme == QuantScheme::kAsym;
    for (QuantType type : {QuantType::kInt4Clip, QuantType::kInt8, QuantType::kInt3}) {
      const bool has_tiles = type != QuantType::kInt3;  // no int8 kernel for 3-bit codes
      // Row-major: what fp32 compute always stores. bf16 scales are the
      // same tensors as fp32 ones (".scales", BF16 instead of F32).
      cases.push_back({type, scheme, ScaleEncoding::kF32, ComputeDtype::kFp32, 128,
                       kRowMajorPackedLayout, asym ? f32_asym : f32_sym});
      cases.push_back({type, scheme, ScaleEncoding::kBf16, ComputeDtype::kFp32, 128,
                       kRowMajorPackedLayout, asym ? f32_asym : f32_sym});
      cases.push_back({type, scheme, ScaleEncoding::kDoubleQuant, ComputeDtype::kFp32, 128,
                       kRowMajorPackedLayout, asym ? dq_asym : dq_sym});
      // int8 compute: the tiles where the layout holds the weights; never
      // for double-quantized scales, nor for columns that are not whole
      // groups of whole 32-blocks (120 at group 64).
      cases.push_back({type, scheme, ScaleEncoding::kF32, ComputeDtype::kInt8, 128,
                       has_tiles ? kInt8TilesLayout : kRowMajorPackedLayout,
                       has_tiles ? tiles : (asym ? f32_asym : f32_sym)});
      cases.push_back({type, scheme, ScaleEncoding::kBf16, ComputeDtype::kInt8, 128,
                       has_tiles ? kInt8TilesBf16Layout : kRowMajorPackedLayout,
                       has_tiles ? tiles : (asym ? f32_asym : f32_sym)});
      cases.push_back({type, scheme, ScaleEncoding::kDoubleQuant, ComputeDtype::kInt8, 128,
                       kRowMajorPackedLayout, asym ? dq_asym : dq_sym});
      cases.push_back({type, scheme, ScaleEncoding::kF32, ComputeDtype::kInt8, 120,
                       kRowMajorPackedLayout, asym ? f32_asym : f32_sym});
    }
  }
  // A codebook format: sym only, 4-bit tiles through its level table.
  cases.push_back({QuantType::kNf4, QuantScheme::kSym, ScaleEncoding::kF32, ComputeDtype::kInt8,
                   128, kInt8TilesLayout, tiles});
  return cases;
}

class ArtifactFormatModuleTest : public testing::Test {
 protected:
  // Writes the tensors as the quantizer does and opens the file as the
  // store does.
  std::unique_ptr<SafetensorsFile> WriteAndOpen(const std::vector<ArtifactTensor>& tensors) {
    const std::string path = testing::TempDir() + "/artifact_format_test.safetensors";
    SafetensorsWriter writer;
    for (const ArtifactTensor& t : tensors) {
      EXPECT_TRUE(writer.AddTensor(t.name, t.dtype, t.shape, t.bytes).ok()) << t.name;
    }
    EXPECT_TRUE(writer.Write(path).ok());
    auto file = SafetensorsFile::Open(path, FileBacking::kCopied);
    EXPECT_TRUE(file.ok()) << file.status();
    return file.ok() ? *std::move(file) : nullptr;
  }
};

constexpr int64_t kRows = 37;  // four full row tiles and a ragged one
constexpr char kModule[] = "model.layers.0.mlp.up_proj";

TEST_F(ArtifactFormatModuleTest, EveryLayoutRoundTrips) {
  for (const LayoutCase& c : AllLayoutCases()) {
    SCOPED_TRACE(CaseName(c));
    QuantSpec spec{c.type, c.scheme, 64};
    spec.scale_encoding = c.scales;
    const std::vector<float> w = RandomWeights(kRows * c.cols);
    auto q = QuantizeMatrix(w.data(), kRows, c.cols, spec);
    ASSERT_TRUE(q.ok()) << q.status();
    auto encoded = EncodeQuantizedLinear(kModule, *q, c.compute);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    const v1::ManifestTensor& entry = encoded->entry;
    EXPECT_EQ(entry.module(), kModule);
    EXPECT_EQ(entry.layout(), c.layout);
    EXPECT_TRUE(entry.quantized());
    ASSERT_EQ(entry.shape_size(), 2);
    EXPECT_EQ(entry.shape(0), kRows);
    EXPECT_EQ(entry.shape(1), c.cols);
    EXPECT_EQ(entry.group_size(), 64);
    EXPECT_EQ(entry.double_quant(), c.scales == ScaleEncoding::kDoubleQuant);
    EXPECT_EQ(entry.scale_dtype(),
              c.scales == ScaleEncoding::kBf16 ? v1::SCALE_BF16 : v1::SCALE_FP32);
    std::set<std::string> suffixes;
    for (const ArtifactTensor& t : encoded->tensors) {
      ASSERT_TRUE(absl::StartsWith(t.name, kModule)) << t.name;
      suffixes.insert(t.name.substr(std::strlen(kModule)));
    }
    EXPECT_EQ(suffixes, c.tensor_suffixes);

    auto file = WriteAndOpen(encoded->tensors);
    ASSERT_NE(file, nullptr);
    auto stored = ReadQuantizedLinear(*file, entry, kRows, c.cols);
    ASSERT_TRUE(stored.ok()) << stored.status();
    const QuantizedMatrixView& view = stored->view;
    EXPECT_EQ(view.spec.type, c.type);
    EXPECT_EQ(view.spec.scheme, c.scheme);
    EXPECT_EQ(view.spec.scale_encoding, c.scales);
    EXPECT_EQ(view.group_size, q->group_size);
    EXPECT_EQ(view.groups_per_row, q->groups_per_row);
    EXPECT_EQ(view.row_bytes, q->row_bytes);
    QuantizedMatrix back;
    if (stored->tiles != nullptr) {
      EXPECT_EQ(view.codes, nullptr);
      ASSERT_EQ(stored->in_place.size(), 1u);
      EXPECT_EQ(static_cast<int64_t>(stored->in_place[0]->nbytes),
                Int8TileGeometryOf(view)->bytes());
      back = FromInt8Tiles(view, stored->tiles);
    } else {
      const size_t groups = static_cast<size_t>(kRows * view.groups_per_row);
      back.codes.assign(view.codes, view.codes + kRows * view.row_bytes);
      back.scales.assign(view.scales, view.scales + groups);
      if (view.zeros != nullptr) back.zeros.assign(view.zeros, view.zeros + groups);
      // Only fp32 scales are used in place; the others were decoded.
      EXPECT_EQ(stored->decoded_scales.empty(), c.scales == ScaleEncoding::kF32);
    }
    EXPECT_EQ(back.codes, q->codes);
    // bf16 and double-quantized scales: q holds the values they decode to.
    EXPECT_EQ(back.scales, q->scales);
    EXPECT_EQ(back.zeros, q->zeros);
  }
}

// The tile layout's sizes come from the block structs; these are the bytes
// artifacts of format version 3 hold, so they must never change.
TEST_F(ArtifactFormatModuleTest, TileGeometryIsPinned) {
  struct Expected {
    QuantType type;
    QuantScheme scheme;
    ScaleEncoding scales;
    int64_t group_stride;
  };
  // 4-bit: 128 code bytes per 32-block of a tile, 8-bit: 256; then 8
  // scales of 4 (fp32) or 2 (bf16) bytes; then 8 zero points (asym).
  const Expected expected[] = {
      {QuantType::kInt4Clip, QuantScheme::kSym, ScaleEncoding::kF32, 2 * 128 + 32},
      {QuantType::kInt4Clip, QuantScheme::kAsym, ScaleEncoding::kF32, 2 * 128 + 32 + 8},
      {QuantType::kInt4Clip, QuantScheme::kSym, ScaleEncoding::kBf16, 2 * 128 + 16},
      {QuantType::kInt8, QuantScheme::kAsym, ScaleEncoding::kBf16, 2 * 256 + 16 + 8},
  };
  for (const Expected& e : expected) {
    QuantSpec spec{e.type, e.scheme, 64};
    spec.scale_encoding = e.scales;
    const std::vector<float> w = RandomWeights(kRows * 128);
    auto q = QuantizeMatrix(w.data(), kRows, 128, spec);
    ASSERT_TRUE(q.ok()) << q.status();
    const auto geometry = Int8TileGeometryOf(q->view());
    ASSERT_TRUE(geometry.has_value());
    EXPECT_EQ(geometry->tiles, 5);
    EXPECT_EQ(geometry->groups, 2);
    EXPECT_EQ(geometry->scales_offset, 2 * geometry->block_bytes);
    EXPECT_EQ(geometry->zeros_offset,
              geometry->scales_offset + kernels::kTileRows * geometry->scale_bytes);
    EXPECT_EQ(geometry->group_stride, e.group_stride);
    EXPECT_EQ(geometry->bytes(), 5 * 2 * e.group_stride);
  }
}

TEST_F(ArtifactFormatModuleTest, ReaderRefusesEntriesThatDoNotMatchTheFile) {
  QuantSpec spec{QuantType::kInt4Clip, QuantScheme::kAsym, 64};
  const std::vector<float> w = RandomWeights(kRows * 128);
  auto q = QuantizeMatrix(w.data(), kRows, 128, spec);
  ASSERT_TRUE(q.ok()) << q.status();
  auto tiled = EncodeQuantizedLinear(kModule, *q, ComputeDtype::kInt8);
  ASSERT_TRUE(tiled.ok()) << tiled.status();
  auto file = WriteAndOpen(tiled->tensors);
  ASSERT_NE(file, nullptr);
  auto read = [&](const v1::ManifestTensor& entry, int64_t rows = kRows) {
    return ReadQuantizedLinear(*file, entry, rows, 128).status();
  };
  ASSERT_TRUE(read(tiled->entry).ok());

  // A layout of a newer writer: refused by name, not misread.
  v1::ManifestTensor entry = tiled->entry;
  entry.set_layout("int8-tiles-v2");
  EXPECT_EQ(read(entry).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(read(entry).message(), "int8-tiles-v2")) << read(entry);
  // The bf16 tiles' name with fp32 scales, or tiles of double-quantized scales.
  entry = tiled->entry;
  entry.set_layout(kInt8TilesBf16Layout);
  EXPECT_EQ(read(entry).code(), absl::StatusCode::kDataLoss);
  entry = tiled->entry;
  entry.set_double_quant(true);
  EXPECT_EQ(read(entry).code(), absl::StatusCode::kDataLoss);
  // Another shape than the model's, a group size the tiles do not have
  // (their tensor's size then differs), an invalid spec.
  EXPECT_EQ(read(tiled->entry, kRows + 1).code(), absl::StatusCode::kDataLoss);
  entry = tiled->entry;
  entry.set_group_size(32);
  EXPECT_FALSE(read(entry).ok());
  entry = tiled->entry;
  entry.set_weight_dtype(v1::NF4);  // asym NF4 does not exist
  EXPECT_EQ(read(entry).code(), absl::StatusCode::kDataLoss);
  // Row-major tensors that the file does not hold.
  entry = tiled->entry;
  entry.set_layout(kRowMajorPackedLayout);
  EXPECT_EQ(read(entry).code(), absl::StatusCode::kNotFound);
}

v1::ArtifactManifest ManifestWith(int version, const v1::ManifestTensor& tensor) {
  v1::ArtifactManifest m;
  m.set_format(kArtifactFormat);
  m.set_format_version(version);
  *m.add_tensors() = tensor;
  return m;
}

TEST_F(ArtifactFormatModuleTest, VersionsFollowTheCompatibilityTable) {
  for (size_t i = 0; i < std::size(kFormatVersionHistory); ++i) {
    EXPECT_EQ(kFormatVersionHistory[i].version, static_cast<int>(i) + 1);
  }
  v1::ManifestTensor plain;
  plain.set_module(kModule);
  plain.set_quantized(true);
  plain.set_layout(kRowMajorPackedLayout);
  plain.set_weight_dtype(v1::INT4_CLIP);
  v1::ManifestTensor int3 = plain;
  int3.set_weight_dtype(v1::INT3);
  v1::ManifestTensor bf16 = plain;
  bf16.set_scale_dtype(v1::SCALE_BF16);
  v1::ManifestTensor double_quant = plain;
  double_quant.set_double_quant(true);
  v1::ManifestTensor tiles = plain;
  tiles.set_layout(kInt8TilesLayout);
  v1::ManifestTensor bf16_tiles = bf16;
  bf16_tiles.set_layout(kInt8TilesBf16Layout);
  v1::ManifestTensor dense;
  dense.set_module("model.norm");

  EXPECT_EQ(FormatVersionNeeded(dense), 1);
  EXPECT_EQ(FormatVersionNeeded(plain), 1);
  for (const auto* t : {&int3, &bf16, &double_quant}) EXPECT_EQ(FormatVersionNeeded(*t), 2);
  for (const auto* t : {&tiles, &bf16_tiles}) EXPECT_EQ(FormatVersionNeeded(*t), 3);
  // The writer marks every artifact 2 at least (what it wrote before the
  // table: the same config keeps its bytes), 3 with tiles.
  EXPECT_EQ(FormatVersionToWrite(ManifestWith(0, plain)), 2);
  EXPECT_EQ(FormatVersionToWrite(ManifestWith(0, int3)), 2);
  EXPECT_EQ(FormatVersionToWrite(ManifestWith(0, bf16_tiles)), 3);

  // Every version of the table is read, with what it may hold.
  EXPECT_TRUE(CheckFormatVersion(ManifestWith(1, plain)).ok());
  EXPECT_TRUE(CheckFormatVersion(ManifestWith(2, double_quant)).ok());
  EXPECT_TRUE(CheckFormatVersion(ManifestWith(3, bf16_tiles)).ok());
  // A future version is refused with a clear message; an invalid one, or
  // a tensor its version cannot hold, is damage.
  const absl::Status future = CheckFormatVersion(ManifestWith(kArtifactFormatVersion + 1, plain));
  EXPECT_EQ(future.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(future.message(), "upgrade the server")) << future;
  EXPECT_TRUE(absl::StrContains(future.message(),
                                absl::StrCat("format version ", kArtifactFormatVersion + 1)))
      << future;
  EXPECT_EQ(CheckFormatVersion(ManifestWith(0, plain)).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(CheckFormatVersion(ManifestWith(2, tiles)).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(CheckFormatVersion(ManifestWith(1, bf16)).code(), absl::StatusCode::kDataLoss);
}

TEST_F(ArtifactFormatModuleTest, DenseTensorsAreListedByModule) {
  EXPECT_EQ(DenseWeightName("lm_head"), "lm_head.weight");
  const int64_t shape[] = {4, 8};
  const v1::ManifestTensor weight = DenseTensorEntry("model.layers.0.mlp.up_proj.weight", shape);
  EXPECT_EQ(weight.module(), "model.layers.0.mlp.up_proj");
  EXPECT_FALSE(weight.quantized());
  ASSERT_EQ(weight.shape_size(), 2);
  EXPECT_EQ(weight.shape(1), 8);
  EXPECT_EQ(DenseTensorEntry("model.layers.0.mlp.up_proj.bias", {shape, 1}).module(),
            "model.layers.0.mlp.up_proj.bias");
}

}  // namespace
}  // namespace wq

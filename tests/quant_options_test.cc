// Config validation of the int3/int2 dtypes and the RTN options (mse_range,
// double quant, bf16 scales), and how their artifacts are stored, versioned
// and read back.
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "common/artifact/artifact_format.h"
#include "common/artifact/artifact_store.h"
#include "common/kernels/cpu_features.h"
#include "common/io/file_util.h"
#include "common/model/llama.h"
#include "common/formats/quant_config.h"
#include "common/formats/quant_format.h"
#include "common/quant/quantizer.h"
#include "common/formats/safetensors.h"
#include "gtest/gtest.h"
#include "tests/model_test_util.h"
#include "google/protobuf/util/json_util.h"

namespace wq {
namespace {

constexpr char kModelDir[] = "testdata/models/stories260K";

v1::WeightOnlyQuantConfig Config(v1::WeightDtype dtype, v1::Scheme scheme = v1::SYM) {
  v1::WeightOnlyQuantConfig c;
  c.set_weight_dtype(dtype);
  c.set_scheme(scheme);
  return c;
}

TEST(QuantConfig, AcceptsLowBitDtypesAndRtnOptions) {
  for (v1::WeightDtype dtype : {v1::INT3, v1::INT2}) {
    for (v1::Scheme scheme : {v1::SYM, v1::ASYM}) {
      auto r = ResolveQuantConfig(Config(dtype, scheme));
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(QuantSpecOf(*r).type, dtype == v1::INT3 ? QuantType::kInt3 : QuantType::kInt2);
    }
  }
  v1::WeightOnlyQuantConfig c = Config(v1::INT4_CLIP);
  c.set_mse_range(true);
  auto r = ResolveQuantConfig(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(QuantSpecOf(*r).scale_encoding, ScaleEncoding::kF32);
  EXPECT_EQ(QuantConfigSlug(*r), "int4_clip-sym-g32-rtn-mse");

  c = Config(v1::NF4);
  c.set_use_double_quant(true);
  r = ResolveQuantConfig(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(QuantSpecOf(*r).scale_encoding, ScaleEncoding::kDoubleQuant);
  EXPECT_EQ(QuantConfigSlug(*r), "nf4-sym-g32-rtn-dq");

  c = Config(v1::INT3, v1::ASYM);
  c.set_scale_dtype(v1::SCALE_BF16);
  r = ResolveQuantConfig(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(QuantSpecOf(*r).scale_encoding, ScaleEncoding::kBf16);
  EXPECT_EQ(QuantConfigSlug(*r), "int3-asym-g32-rtn-bf16scale");
  // Plain configs keep their slug.
  EXPECT_EQ(QuantConfigSlug(*ResolveQuantConfig(Config(v1::INT4_CLIP))), "int4_clip-sym-g32-rtn");
}

TEST(QuantConfig, RejectsInvalidCombinations) {
  v1::WeightOnlyQuantConfig c = Config(v1::INT4_CLIP);
  c.set_use_double_quant(true);
  c.set_scale_dtype(v1::SCALE_BF16);
  EXPECT_EQ(ResolveQuantConfig(c).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveQuantConfig(Config(v1::NF4, v1::ASYM)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // asym with int8 compute is not refused (ITREX does): the zero point
  // folds into the integer dot products per group (kernels.h QuantArgs).
  c = Config(v1::INT3, v1::ASYM);
  c.set_compute_dtype(v1::COMPUTE_INT8);
  EXPECT_TRUE(ResolveQuantConfig(c).ok());
}

TEST(QuantConfig, EveryFormatHasAProtoDtype) {
  for (const QuantFormat& f : AllQuantFormats()) {
    const v1::WeightDtype dtype = WeightDtypeOf(f.type);
    EXPECT_NE(dtype, v1::WEIGHT_DTYPE_UNSPECIFIED) << f.name;
    EXPECT_EQ(QuantTypeOf(dtype), f.type);
  }
}

TEST(QuantConfig, ComputeDtypeNamesAndProtoRoundTrip) {
  for (int c = 0; c < kNumComputeDtypes; ++c) {
    const auto compute = static_cast<ComputeDtype>(c);
    EXPECT_EQ(ParseComputeDtype(ComputeDtypeName(compute)), compute);
    EXPECT_EQ(ComputeDtypeOf(ProtoComputeDtype(compute)), compute);
  }
  EXPECT_EQ(ParseComputeDtype("fp64"), std::nullopt);
  EXPECT_EQ(ParseComputeDtype(""), std::nullopt);
}

class ArtifactFormatTest : public testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::TempDir() + "/quant_options_artifacts";
    auto store = ArtifactStore::Open(root_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  v1::ArtifactManifest Quantize(const v1::WeightOnlyQuantConfig& config) {
    QuantizeRequest request;
    request.model_id = "stories260K";
    request.model_dir = kModelDir;
    request.config = config;
    auto m = QuantizeModel(request, *store_);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *m : v1::ArtifactManifest();
  }

  // Tensor names and dtypes of the artifact's safetensors file.
  std::unique_ptr<SafetensorsFile> Weights(const v1::ArtifactManifest& m) {
    auto f = SafetensorsFile::Open(store_->ArtifactDir(m.artifact_id()) + "/" + kWeightsFile);
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? *std::move(f) : nullptr;
  }

  // The Int8TilesLayout test for one scale dtype, whose tiles are in `layout`.
  void ExpectInt8Tiles(v1::ScaleDtype scales, v1::Scheme scheme, const std::string& layout);

  void SetFormatVersion(const v1::ArtifactManifest& m, int version) {
    const std::string path = store_->ArtifactDir(m.artifact_id()) + "/" + kManifestFile;
    std::string json = *ReadFile(path);
    const std::string from = "\"format_version\": " + std::to_string(m.format_version());
    ASSERT_TRUE(absl::StrContains(json, from));
    json.replace(json.find(from), from.size(),
                 "\"format_version\": " + std::to_string(version));
    WriteManifest(m.artifact_id(), json);
  }

  // Replaces the manifest as a writer of it would, its checksum included.
  void WriteManifest(const std::string& id, const std::string& json) {
    const std::string dir = store_->ArtifactDir(id);
    ASSERT_TRUE(WriteFileDurably(dir + "/" + kManifestFile, json).ok());
    ASSERT_TRUE(WriteFileDurably(dir + "/" + kManifestChecksumFile, Sha256Hex(json)).ok());
  }

  std::string root_;
  std::unique_ptr<ArtifactStore> store_;
};

constexpr char kModule[] = "model.layers.0.mlp.down_proj";

TEST_F(ArtifactFormatTest, DoubleQuantTensors) {
  v1::WeightOnlyQuantConfig c = Config(v1::INT4_CLIP, v1::ASYM);
  c.set_use_double_quant(true);
  const v1::ArtifactManifest m = Quantize(c);
  EXPECT_EQ(m.format_version(), 2);
  auto f = Weights(m);
  ASSERT_NE(f, nullptr);
  const std::string module = kModule;
  EXPECT_EQ(f->Find(module + ".scales"), nullptr);
  EXPECT_TRUE(f->Find(module + ".scales_q") != nullptr);
  EXPECT_TRUE(f->Find(module + ".scales_scale") != nullptr);
  EXPECT_TRUE(f->Find(module + ".scales_mean") != nullptr);
  EXPECT_TRUE(f->Find(module + ".qzeros") != nullptr);
  auto weights = store_->LoadWeights(m.artifact_id());
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->layers[0].linear[kDown].quantized_view().spec.scale_encoding,
            ScaleEncoding::kDoubleQuant);
}

TEST_F(ArtifactFormatTest, Bf16ScalesAndVersions) {
  v1::WeightOnlyQuantConfig c = Config(v1::INT3);
  c.set_scale_dtype(v1::SCALE_BF16);
  const v1::ArtifactManifest m = Quantize(c);
  auto f = Weights(m);
  ASSERT_NE(f, nullptr);
  EXPECT_TRUE(f->Find(std::string(kModule) + ".scales") != nullptr);
  EXPECT_FALSE(f->Find(std::string(kModule) + ".scales_q") != nullptr);
  ASSERT_TRUE(store_->LoadWeights(m.artifact_id()).ok());

  // A newer version is refused with a clear message; a plain artifact marked
  // version 1 (what the previous release wrote) still loads.
  SetFormatVersion(m, kArtifactFormatVersion + 1);
  EXPECT_EQ(store_->ReadManifest(m.artifact_id()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  const v1::ArtifactManifest plain = Quantize(Config(v1::INT4_CLIP));
  SetFormatVersion(plain, 1);
  auto v1_manifest = store_->ReadManifest(plain.artifact_id());
  ASSERT_TRUE(v1_manifest.ok()) << v1_manifest.status();
  EXPECT_EQ(v1_manifest->format_version(), 1);
  EXPECT_TRUE(store_->LoadWeights(plain.artifact_id()).ok());

  // The reader's in-memory half (what manifest_fuzz drives) agrees, and
  // refuses a manifest of another id.
  const std::string json =
      *ReadFile(store_->ArtifactDir(plain.artifact_id()) + "/" + kManifestFile);
  auto parsed = ParseManifest(json, plain.artifact_id());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->SerializeAsString(), v1_manifest->SerializeAsString());
  EXPECT_EQ(ParseManifest(json, "other").status().code(), absl::StatusCode::kDataLoss);
}

// Per-chunk checksums: verified when the manifest lists them, a corrupt or
// inconsistent chunk list is DATA_LOSS naming the chunk. (Real artifacts get
// them for files over kVerifyChunkBytes; the small model's file gets them
// here by rewriting its manifest with 64 KiB chunks.)
TEST_F(ArtifactFormatTest, ChunkChecksums) {
  v1::WeightOnlyQuantConfig c = Config(v1::NF4);
  c.set_group_size(64);
  const v1::ArtifactManifest m = Quantize(c);
  const std::string dir = store_->ArtifactDir(m.artifact_id());
  const std::string weights = dir + "/" + kWeightsFile;
  auto chunks = Sha256FileChunks(weights, 64 << 10);
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  ASSERT_GT(chunks->size(), 2u);
  auto write_manifest = [&](const v1::ArtifactManifest& manifest) {
    std::string json;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(manifest, &json).ok());
    WriteManifest(m.artifact_id(), json);
  };
  v1::ArtifactManifest chunked = m;
  for (v1::ManifestFile& f : *chunked.mutable_files()) {
    if (f.name() != kWeightsFile) continue;
    f.set_sha256("not checked when chunks are listed");
    f.set_chunk_bytes(64 << 10);
    for (const std::string& h : *chunks) f.add_chunk_sha256(h);
  }
  write_manifest(chunked);
  EXPECT_TRUE(store_->Verify(m.artifact_id()).ok());

  v1::ArtifactManifest missing_chunk = chunked;
  for (v1::ManifestFile& f : *missing_chunk.mutable_files()) {
    if (f.name() == kWeightsFile) f.mutable_chunk_sha256()->RemoveLast();
  }
  write_manifest(missing_chunk);
  absl::Status status = store_->Verify(m.artifact_id());
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;

  write_manifest(chunked);
  std::string bytes = *ReadFile(weights);
  bytes[(64 << 10) + 100] ^= 1;  // in chunk 1
  ASSERT_TRUE(WriteFileDurably(weights, bytes).ok());
  status = store_->Verify(m.artifact_id());
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(status.message(), "chunk 1 ")) << status;
  EXPECT_EQ(store_->LoadWeights(m.artifact_id()).status().code(), absl::StatusCode::kDataLoss);

  bytes.resize(bytes.size() - 1);  // truncated: the size no longer matches
  ASSERT_TRUE(WriteFileDurably(weights, bytes).ok());
  status = store_->Verify(m.artifact_id());
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(status.message(), "bytes, manifest says")) << status;
}

// Logits of the artifact's model for a fixed prompt.
std::vector<float> Logits(const std::shared_ptr<const LlamaWeights>& weights) {
  return test::SequenceLogits(LlamaModel(weights), {1, 403, 407, 261, 378, 29});
}

// Quantized for int8 compute, the linears are stored in the int8 kernels'
// layout (format version 3; with bf16 scales its bf16 variant) and computed
// from it in place; the same config with fp32 compute stays row-major
// (version 2). Either artifact with any arithmetic gives bit-identical
// logits. asym too: its zero points sit in the tiles.
TEST_F(ArtifactFormatTest, Int8TilesLayout) {
  for (v1::Scheme scheme : {v1::SYM, v1::ASYM}) {
    for (v1::ScaleDtype scales : {v1::SCALE_FP32, v1::SCALE_BF16}) {
      SCOPED_TRACE(testing::Message() << v1::ScaleDtype_Name(scales) << " "
                                      << v1::Scheme_Name(scheme));
      ExpectInt8Tiles(scales, scheme,
                      scales == v1::SCALE_BF16 ? kInt8TilesBf16Layout : kInt8TilesLayout);
    }
  }
}

void ArtifactFormatTest::ExpectInt8Tiles(v1::ScaleDtype scales, v1::Scheme scheme,
                                         const std::string& layout) {
  v1::WeightOnlyQuantConfig c = Config(v1::INT4_CLIP, scheme);
  c.set_group_size(64);  // artifacts of their own (the store reuses equal configs)
  c.set_scale_dtype(scales);
  c.set_compute_dtype(v1::COMPUTE_INT8);
  const v1::ArtifactManifest tiled = Quantize(c);
  c.set_compute_dtype(v1::COMPUTE_FP32);
  const v1::ArtifactManifest plain = Quantize(c);
  EXPECT_EQ(tiled.format_version(), 3);
  EXPECT_EQ(plain.format_version(), 2);
  // Tiles need whole groups of whole 32-blocks: down_proj's 172 input
  // features are not, so it stays row-major in both.
  int tiled_tensors = 0;
  for (const v1::ManifestTensor& t : tiled.tensors()) {
    if (!t.quantized()) continue;
    const bool tileable = t.shape(1) % 64 == 0;
    EXPECT_EQ(t.layout(), tileable ? layout : kRowMajorPackedLayout) << t.module();
    tiled_tensors += tileable;
  }
  EXPECT_EQ(tiled_tensors, 5 * 6);
  auto f = Weights(tiled);
  ASSERT_NE(f, nullptr);
  const std::string up = "model.layers.0.mlp.up_proj";
  EXPECT_NE(f->Find(up + ".qweight_tiles"), nullptr);
  EXPECT_EQ(f->Find(up + ".qweight"), nullptr);
  EXPECT_EQ(f->Find(up + ".scales"), nullptr);
  EXPECT_NE(f->Find(std::string(kModule) + ".qweight"), nullptr);

  for (ComputeDtype compute : {ComputeDtype::kInt8, ComputeDtype::kFp32, ComputeDtype::kBf16}) {
    SCOPED_TRACE(ComputeDtypeName(compute));
    LoadOptions load;
    load.compute = compute;
    auto from_tiles = store_->LoadWeights(tiled.artifact_id(), load);
    auto from_plain = store_->LoadWeights(plain.artifact_id(), load);
    load.private_weights = true;
    auto private_tiles = store_->LoadWeights(tiled.artifact_id(), load);
    ASSERT_TRUE(from_tiles.ok()) << from_tiles.status();
    ASSERT_TRUE(from_plain.ok()) << from_plain.status();
    ASSERT_TRUE(private_tiles.ok()) << private_tiles.status();
    EXPECT_EQ((*from_tiles)->layers[0].linear[kDown].compute_dtype(), compute);
    // Every compute dtype's SIMD kernels read the packed copy only: loaded
    // from the row-major artifact, a tileable linear keeps no row-major
    // codes (the weights are held once), down_proj keeps its own.
    if (ActiveIsa() != Isa::kScalar) {
      for (const auto* w : {&*from_plain, &*from_tiles}) {
        const LinearWeight& l = (*w)->layers[0].linear[kUp];
        EXPECT_TRUE(l.packed());
        EXPECT_EQ(l.quantized_view().codes, nullptr);
        EXPECT_EQ(l.quantized_view().scales, nullptr);
        EXPECT_NE((*w)->layers[0].linear[kDown].quantized_view().codes, nullptr);
      }
    }
    const std::vector<float> logits = Logits(*from_plain);
    EXPECT_EQ(Logits(*from_tiles), logits);
    EXPECT_EQ(Logits(*private_tiles), logits);
  }
}

// A loaded artifact holds its own copy of the weights: truncating the file
// under it (which killed a mapping's reader with SIGBUS) changes no logits.
TEST_F(ArtifactFormatTest, LoadedWeightsSurviveTruncatedFile) {
  v1::WeightOnlyQuantConfig row_major = Config(v1::INT4_CLIP, v1::ASYM);
  row_major.set_group_size(16);
  v1::WeightOnlyQuantConfig tiles = Config(v1::INT4_CLIP);
  tiles.set_group_size(16);
  tiles.set_compute_dtype(v1::COMPUTE_INT8);
  for (const v1::WeightOnlyQuantConfig& c : {row_major, tiles}) {
    const v1::ArtifactManifest m = Quantize(c);
    SCOPED_TRACE(m.artifact_id());
    auto weights = store_->LoadWeights(m.artifact_id());
    ASSERT_TRUE(weights.ok()) << weights.status();
    const std::vector<float> before = Logits(*weights);
    const std::string path = store_->ArtifactDir(m.artifact_id()) + "/" + kWeightsFile;
    ASSERT_EQ(::truncate(path.c_str(), 0), 0);
    EXPECT_EQ(Logits(*weights), before);
  }
}

// Reuse checks the checksums: a corrupt artifact is moved aside to a hidden
// .corrupt-<id>-<time> directory and rebuilt, not handed out again.
TEST_F(ArtifactFormatTest, CorruptArtifactIsQuarantinedAndRebuilt) {
  v1::WeightOnlyQuantConfig c = Config(v1::INT4_CLIP);
  c.set_group_size(16);  // an artifact of its own (the store reuses equal configs)
  const v1::ArtifactManifest first = Quantize(c);
  const std::string id = first.artifact_id();
  const std::string weights = store_->ArtifactDir(id) + "/" + kWeightsFile;
  std::string bytes = *ReadFile(weights);
  bytes[bytes.size() / 2] ^= 0x5a;
  ASSERT_TRUE(WriteFileDurably(weights, bytes).ok());
  ASSERT_EQ(store_->Verify(id).code(), absl::StatusCode::kDataLoss);

  const v1::ArtifactManifest second = Quantize(c);
  EXPECT_EQ(second.artifact_id(), id);
  EXPECT_TRUE(store_->Verify(id).ok());
  int quarantined = 0;
  for (const auto& entry : std::filesystem::directory_iterator(root_)) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, ".corrupt-" + id + "-")) {
      ++quarantined;
      EXPECT_EQ(*ReadFile(entry.path().string() + "/" + kWeightsFile), bytes);
    }
  }
  EXPECT_EQ(quarantined, 1);
  // Listings skip the quarantined copy.
  int listed = 0;
  for (const v1::ArtifactManifest& m : store_->List()) listed += m.artifact_id() == id;
  EXPECT_EQ(listed, 1);
}

// manifest.sha256 covers the manifest itself: an edited config is DATA_LOSS
// for reading, listing and verifying, and quantizing again rebuilds it.
TEST_F(ArtifactFormatTest, EditedManifestIsDataLoss) {
  v1::WeightOnlyQuantConfig c = Config(v1::INT4_CLIP, v1::ASYM);
  c.set_group_size(32);
  const v1::ArtifactManifest m = Quantize(c);
  const std::string path = store_->ArtifactDir(m.artifact_id()) + "/" + kManifestFile;
  std::string json = *ReadFile(path);
  const std::string from = "\"group_size\": 32";
  ASSERT_TRUE(absl::StrContains(json, from)) << json;
  json.replace(json.find(from), from.size(), "\"group_size\": 64");
  ASSERT_TRUE(WriteFileDurably(path, json).ok());

  EXPECT_EQ(store_->ReadManifest(m.artifact_id()).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store_->Verify(m.artifact_id()).code(), absl::StatusCode::kDataLoss);
  for (const v1::ArtifactManifest& listed : store_->List()) {
    EXPECT_NE(listed.artifact_id(), m.artifact_id());
  }
  EXPECT_EQ(Quantize(c).config().group_size(), 32);
  EXPECT_TRUE(store_->Verify(m.artifact_id()).ok());
}

// Opening a store removes the temporaries crashed writers left (a directory
// whose lock nobody holds, or a lone lock file) but not one a live writer
// holds the lock of, which still commits.
TEST_F(ArtifactFormatTest, OpeningTheStoreKeepsLiveWritersTemporaries) {
  auto writer = store_->Create("in-progress");
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE(WriteFileDurably((*writer)->dir() + "/part", "bytes").ok());
  const std::string stale = root_ + "/.tmp-crashed-";
  std::filesystem::create_directory(stale + "1");
  std::filesystem::create_directory(stale + "2");
  ASSERT_TRUE(WriteFileDurably(stale + "2.lock", "").ok());
  ASSERT_TRUE(WriteFileDurably(stale + "3.lock", "").ok());

  ASSERT_TRUE(ArtifactStore::Open(root_).ok());
  EXPECT_TRUE(std::filesystem::exists((*writer)->dir() + "/part"));
  for (const char* left : {"1", "2", "2.lock", "3.lock"}) {
    EXPECT_FALSE(std::filesystem::exists(stale + left)) << left;
  }
  const std::string lock = (*writer)->dir() + ".lock";
  EXPECT_TRUE(std::filesystem::exists(lock));
  ASSERT_TRUE((*writer)->Commit(v1::ArtifactManifest()).ok());
  EXPECT_TRUE(store_->Exists("in-progress"));
  EXPECT_FALSE(std::filesystem::exists(lock));
}

}  // namespace
}  // namespace wq

namespace wq {
namespace {

// Recomputes the manifest's file checksums and the manifest's own, as if the
// damage had happened before the artifact was sealed: the loader's parsers,
// not the checksums, must then find it.
void Reseal(ArtifactStore& store, const std::string& id) {
  const std::string dir = store.ArtifactDir(id);
  std::string json = *ReadFile(dir + "/" + kManifestFile);
  v1::ArtifactManifest manifest;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &manifest).ok());
  for (v1::ManifestFile& f : *manifest.mutable_files()) {
    const std::string path = dir + "/" + f.name();
    if (!std::filesystem::exists(path)) continue;
    f.set_size_bytes(static_cast<int64_t>(std::filesystem::file_size(path)));
    f.set_sha256(*Sha256File(path));
    if (f.chunk_bytes() > 0) {
      f.clear_chunk_sha256();
      const absl::StatusOr<std::vector<std::string>> chunks =
          Sha256FileChunks(path, f.chunk_bytes());
      for (const std::string& c : *chunks) f.add_chunk_sha256(c);
    }
  }
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  json.clear();
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(manifest, &json, options).ok());
  ASSERT_TRUE(WriteFileDurably(dir + "/" + kManifestFile, json).ok());
  ASSERT_TRUE(WriteFileDurably(dir + "/" + kManifestChecksumFile, Sha256Hex(json) + "\n").ok());
}

// Rewrites `file` of the artifact in `dir` through `edit`.
void Edit(const std::string& dir, const std::string& file,
          const std::function<void(std::string&)>& edit) {
  std::string bytes = *ReadFile(dir + "/" + file);
  edit(bytes);
  ASSERT_TRUE(WriteFileDurably(dir + "/" + file, bytes).ok());
}

// Replaces the first `from` (which must be there) by `to` of the same length,
// so that the safetensors header keeps its declared size.
void ReplaceSameLength(std::string& bytes, const std::string& from, const std::string& to) {
  ASSERT_EQ(from.size(), to.size());
  const size_t at = bytes.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  bytes.replace(at, from.size(), to);
}

TEST_F(ArtifactFormatTest, PlainCorruptionsAreDataLoss) {
  const v1::ArtifactManifest m = Quantize(Config(v1::INT4_CLIP));
  const std::string id = m.artifact_id();
  const std::string dir = store_->ArtifactDir(id);
  const std::string pristine = root_ + "/pristine-copy";
  std::filesystem::remove_all(pristine);
  std::filesystem::copy(dir, pristine, std::filesystem::copy_options::recursive);

  struct Corruption {
    const char* name;
    std::function<void()> apply;
    // Also with the checksums recomputed afterwards (not for the manifest
    // and its checksum, which resealing rewrites).
    bool resealable = true;
  };
  const std::string weights = kWeightsFile;
  const std::vector<Corruption> corruptions = {
      {"weights truncated to half",
       [&] { Edit(dir, weights, [](std::string& b) { b.resize(b.size() / 2); }); }},
      {"weights truncated inside the header length",
       [&] { Edit(dir, weights, [](std::string& b) { b.resize(4); }); }},
      {"weights emptied", [&] { Edit(dir, weights, [](std::string& b) { b.clear(); }); }},
      {"header length past the file",
       [&] { Edit(dir, weights, [](std::string& b) { b[6] = '\x7f'; }); }},
      {"header length zero",
       [&] { Edit(dir, weights, [](std::string& b) { std::fill_n(b.begin(), 8, '\0'); }); }},
      {"header bytes flipped",
       [&] { Edit(dir, weights, [](std::string& b) { b[8] ^= 0x55; b[9] ^= 0x55; }); }},
      {"header not JSON",
       [&] { Edit(dir, weights, [](std::string& b) { std::fill_n(b.begin() + 8, 16, '#'); }); }},
      {"wrong dtype string",
       [&] {
         Edit(dir, weights, [](std::string& b) { ReplaceSameLength(b, "\"F32\"", "\"Q32\""); });
       }},
      {"dtype of another width",
       [&] {
         Edit(dir, weights, [](std::string& b) { ReplaceSameLength(b, "\"F32\"", "\"F64\""); });
       }},
      {"data offsets past the end",
       [&] {
         Edit(dir, weights, [](std::string& b) {
           const size_t at = b.find("\"data_offsets\":[");
           ASSERT_NE(at, std::string::npos);
           size_t digit = b.find_first_of("0123456789", at);
           const size_t end = b.find(']', digit);
           for (size_t i = digit; i < end; ++i) {
             if (b[i] >= '0' && b[i] <= '9') b[i] = '9';
           }
         });
       }},
      {"data offsets reversed",
       [&] {
         Edit(dir, weights, [](std::string& b) {
           const size_t at = b.find("\"data_offsets\":[");
           ASSERT_NE(at, std::string::npos);
           const size_t open = at + 16, comma = b.find(',', open), close = b.find(']', comma);
           const std::string first = b.substr(open, comma - open);
           const std::string second = b.substr(comma + 1, close - comma - 1);
           if (first.size() == second.size()) {
             b.replace(open, first.size(), second);
             b.replace(comma + 1, second.size(), first);
           } else {
             b[comma + 1] = '9';  // different widths: the end past the data instead
           }
         });
       }},
      {"tensor renamed in the header",
       [&] { Edit(dir, weights, [](std::string& b) { ReplaceSameLength(b, "model.", "modeX."); }); }},
      {"weights deleted", [&] { std::filesystem::remove(dir + "/" + weights); }},
      {"config.json not JSON",
       [&] { Edit(dir, "config.json", [](std::string& b) { b = "{not json"; }); }},
      {"config.json with a wrong hidden size",
       [&] {
         Edit(dir, "config.json", [](std::string& b) {
           const size_t at = b.find("\"hidden_size\"");
           ASSERT_NE(at, std::string::npos);
           const size_t digit = b.find_first_of("0123456789", at);
           b.insert(digit, "1");
         });
       }},
      {"manifest not JSON", [&] { Edit(dir, kManifestFile, [](std::string& b) { b = "]"; }); },
       false},
      {"manifest checksum garbage",
       [&] { Edit(dir, kManifestChecksumFile, [](std::string& b) { b = "0000\n"; }); }, false},
  };
  // Edits of the manifest itself, with its checksum recomputed (Reseal would
  // undo a file-list edit, so these are sealed by WriteManifest).
  const auto FirstQuantized = [](v1::ArtifactManifest& a) {
    for (v1::ManifestTensor& t : *a.mutable_tensors()) {
      if (t.quantized()) return &t;
    }
    ADD_FAILURE() << "no quantized tensor";
    return a.mutable_tensors(0);
  };
  const std::vector<std::pair<const char*, std::function<void(v1::ArtifactManifest&)>>>
      manifest_edits = {
          {"file name outside the directory",
           [](v1::ArtifactManifest& a) { a.mutable_files(0)->set_name("../x"); }},
          {"weights missing from the file list",
           [](v1::ArtifactManifest& a) { a.clear_files(); }},
          {"quantized tensor missing from the manifest",
           [&](v1::ArtifactManifest& a) {
             const v1::ManifestTensor* quantized = FirstQuantized(a);
             for (int i = 0; i < a.tensors_size(); ++i) {
               if (&a.tensors(i) == quantized) a.mutable_tensors()->DeleteSubrange(i, 1);
             }
           }},
          {"group size zero", [&](v1::ArtifactManifest& a) { FirstQuantized(a)->set_group_size(0); }},
          {"weight dtype unknown",
           [&](v1::ArtifactManifest& a) {
             FirstQuantized(a)->set_weight_dtype(static_cast<v1::WeightDtype>(999));
           }},
          {"weight dtype unset",
           [&](v1::ArtifactManifest& a) {
             FirstQuantized(a)->set_weight_dtype(v1::WEIGHT_DTYPE_UNSPECIFIED);
           }},
          {"artifact id of another",
           [](v1::ArtifactManifest& a) { a.set_artifact_id("someone-else"); }},
          {"format of another", [](v1::ArtifactManifest& a) { a.set_format("zip"); }},
      };

  auto restore = [&] {
    std::filesystem::remove_all(dir);
    std::filesystem::copy(pristine, dir, std::filesystem::copy_options::recursive);
  };
  auto expect_data_loss = [&](const std::string& what) {
    const absl::StatusOr<std::shared_ptr<const LlamaWeights>> loaded = store_->LoadWeights(id);
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss) << what << ": "
                                                                   << loaded.status();
  };
  int cases = 0;
  for (const Corruption& c : corruptions) {
    for (const bool resealed : {false, true}) {
      if (resealed && !c.resealable) continue;
      restore();
      c.apply();
      if (resealed) Reseal(*store_, id);
      expect_data_loss(absl::StrCat(c.name, resealed ? " (resealed)" : ""));
      ++cases;
    }
  }
  for (const auto& [name, edit] : manifest_edits) {
    restore();
    v1::ArtifactManifest edited = m;
    edit(edited);
    std::string json;
    google::protobuf::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(edited, &json, options).ok());
    WriteManifest(id, json);
    expect_data_loss(name);
    ++cases;
  }
  restore();
  EXPECT_TRUE(store_->LoadWeights(id).ok());
  EXPECT_EQ(cases, 40);
}

}  // namespace
}  // namespace wq

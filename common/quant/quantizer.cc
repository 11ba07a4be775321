#include "common/quant/quantizer.h"

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/artifact/artifact_format.h"
#include "common/io/parallel.h"
#include "common/quant/calibrated_transform.h"
#include "common/quant/calibration.h"
#include "common/io/file_util.h"
#include "common/model/llama.h"
#include "common/io/logging.h"
#include "common/formats/quant_config.h"
#include "common/formats/quant_format.h"
#include "common/formats/safetensors.h"
#include "common/io/status_macros.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/timestamp.pb.h"

namespace wq {
namespace fs = std::filesystem;
namespace {

constexpr char kQuantizerName[] = "wq-quantizer/1";

// Files of the source model that travel into the artifact unchanged.
// Whichever tokenizer files the model has (Tokenizer::LoadModelDir), and its
// generation config.
constexpr const char* kCopiedFiles[] = {"config.json",     "generation_config.json",
                                        "tokenizer.model", "tokenizer.json",
                                        "tokenizer_config.json", "vocab.json",
                                        "merges.txt"};

// Progress reporting, serialised across worker threads.
class ProgressReporter {
 public:
  explicit ProgressReporter(const QuantizeRequest& request) : request_(request) {}
  void Report(QuantizePhase phase, int step, int total, double fraction, std::string message) {
    if (!request_.on_progress) return;
    std::lock_guard<std::mutex> lock(mu_);
    QuantizeProgress p;
    p.phase = phase;
    p.step = step;
    p.total_steps = total;
    p.fraction = std::clamp(fraction, 0.0, 1.0);
    p.message = std::move(message);
    request_.on_progress(p);
  }

 private:
  const QuantizeRequest& request_;
  std::mutex mu_;
};

// The fp32 values of a checkpoint matrix: in place when it is stored as
// fp32, else (16-bit as stored) converted into *converted.
const float* DenseF32(const LinearWeight& w, std::vector<float>* converted) {
  if (w.dense() != nullptr) return w.dense();
  converted->resize(w.out_features() * w.in_features());
  w.DenseRowsToF32(0, w.out_features(), converted->data());
  return converted->data();
}

// RTN of one linear. With mse_range the clip ratio comes from INC's
// search_clip, which fake-quantizes with fp32 scales (no double quant), so
// the search ignores the scale encoding.
absl::StatusOr<QuantizedMatrix> QuantizeLinear(const LinearWeight& w, QuantSpec spec,
                                               bool mse_range) {
  std::vector<float> converted;
  const float* m = DenseF32(w, &converted);
  if (mse_range) {
    QuantSpec search = spec;
    search.scale_encoding = ScaleEncoding::kF32;
    ASSIGN_OR_RETURN(spec.quantile, SearchClipRatio(m, w.out_features(),
                                                    w.in_features(), search,
                                                    DefaultClipRatios()));
  }
  return QuantizeMatrix(m, w.out_features(), w.in_features(), spec);
}

// The artifact's tensors and their manifest entries, added as they are made;
// tensor bytes spill to disk at once, so memory holds one block at a time.
class ArtifactTensors {
 public:
  ArtifactTensors(const v1::WeightOnlyQuantConfig& config, std::string spill_path,
                  v1::ArtifactManifest* manifest)
      : config_(config), writer_(std::move(spill_path)), manifest_(manifest) {
    writer_.SetMetadata("format", kArtifactFormat);
  }

  // An fp32 tensor under its checkpoint name; the manifest lists it by its
  // module (the name without ".weight") or, for a bias, by its full name.
  absl::Status AddF32(const std::string& tensor, const float* data, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    *manifest_->add_tensors() = DenseTensorEntry(tensor, shape);
    manifest_->set_fp32_params(manifest_->fp32_params() + n);
    return writer_.AddF32(tensor, shape, absl::MakeConstSpan(data, n));
  }

  // Served with int8 compute, a linear is stored in the int8 kernels' layout
  // where it fits, which loading then maps instead of packing.
  absl::Status AddQuantized(const std::string& module, const QuantizedMatrix& q) {
    ASSIGN_OR_RETURN(EncodedLinear encoded,
                     EncodeQuantizedLinear(module, q, ComputeDtypeOf(config_.compute_dtype())));
    *manifest_->add_tensors() = std::move(encoded.entry);
    if (config_.mse_range()) clip_log_.push_back(absl::StrFormat("%s %.3f", module, q.spec.quantile));
    for (ArtifactTensor& t : encoded.tensors) {
      RETURN_IF_ERROR(writer_.AddTensor(std::move(t.name), t.dtype, std::move(t.shape),
                                        std::move(t.bytes)));
    }
    const int64_t params = q.rows * q.cols;
    manifest_->set_quantized_params(manifest_->quantized_params() + params);
    quantized_bits_ += BitsPerWeight(q.view()) * static_cast<double>(params);
    return absl::OkStatus();
  }

  // A linear layer: quantized, or kept in fp32 when skipped.
  absl::Status AddLinear(const std::string& module, const LinearWeight& w, bool skip) {
    if (skip) {
      std::vector<float> converted;
      return AddF32(DenseWeightName(module), DenseF32(w, &converted),
                    {w.out_features(), w.in_features()});
    }
    ASSIGN_OR_RETURN(QuantizedMatrix q, QuantizeLinear(w, QuantSpecOf(config_), config_.mse_range()));
    return AddQuantized(module, q);
  }

  // The model in checkpoint order: the embedding, each block (its linears
  // quantized in parallel), then the final norm and lm_head.
  absl::Status AddEmbedding(const LlamaConfig& c, const LinearWeight& embed) {
    std::vector<float> converted;
    return AddF32(DenseWeightName(kEmbedName), DenseF32(embed, &converted),
                  {c.vocab_size, c.hidden_size});
  }

  absl::Status AddBlock(const LlamaConfig& c, int i, const LlamaLayerWeights& layer) {
    for (const BlockNormSpec& norm : BlockNorms(c)) {
      RETURN_IF_ERROR(AddF32(DenseWeightName(BlockModuleName(i, norm.name())),
                             layer.norm[norm.role], {norm.size}));
    }
    const std::vector<BlockLinearSpec> linears = BlockLinears(c);
    std::vector<std::string> modules(linears.size());
    std::vector<bool> skipped(linears.size());
    for (size_t j = 0; j < linears.size(); ++j) {
      modules[j] = BlockModuleName(i, linears[j].name());
      skipped[j] = IsSkippedModule(config_, modules[j]);
    }
    std::vector<absl::StatusOr<QuantizedMatrix>> quantized(
        linears.size(), absl::InternalError("not quantized"));
    ParallelFor(size_t{0}, linears.size(), [&](size_t j) {
      if (skipped[j]) return;
      quantized[j] = QuantizeLinear(layer.linear[linears[j].role], QuantSpecOf(config_),
                                    config_.mse_range());
    });
    for (size_t j = 0; j < linears.size(); ++j) {
      const LinearWeight& w = layer.linear[linears[j].role];
      if (skipped[j]) {
        RETURN_IF_ERROR(AddLinear(modules[j], w, /*skip=*/true));
      } else if (!quantized[j].ok()) {
        return absl::Status(quantized[j].status().code(),
                            absl::StrCat(modules[j], ": ", quantized[j].status().message()));
      } else {
        RETURN_IF_ERROR(AddQuantized(modules[j], *quantized[j]));
      }
      if (linears[j].bias) {
        RETURN_IF_ERROR(AddF32(absl::StrCat(modules[j], ".bias"), layer.bias[linears[j].role],
                               {linears[j].out_features}));
      }
    }
    return absl::OkStatus();
  }

  absl::Status AddHead(const LlamaConfig& c, const float* final_norm, const LinearWeight& lm_head) {
    RETURN_IF_ERROR(AddF32(DenseWeightName(kFinalNormName), final_norm, {c.hidden_size}));
    const std::string name(kLmHeadName);
    return AddLinear(name, lm_head, IsSkippedModule(config_, name));
  }

  absl::Status Write(const std::string& path) { return writer_.Write(path); }
  double quantized_bits() const { return quantized_bits_; }
  const std::vector<std::string>& clip_log() const { return clip_log_; }

 private:
  const v1::WeightOnlyQuantConfig& config_;
  SafetensorsWriter writer_;
  v1::ArtifactManifest* manifest_;
  double quantized_bits_ = 0;
  std::vector<std::string> clip_log_;
};

}  // namespace

absl::StatusOr<std::string> ModelChecksum(const RootedPath& model_dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(model_dir.Full(), ec)) {
    if (entry.is_regular_file()) names.push_back(entry.path().filename().string());
  }
  if (ec) {
    return absl::NotFoundError(absl::StrCat("cannot list ", model_dir.path, ": ", ec.message()));
  }
  std::sort(names.begin(), names.end());
  std::string listing;
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(std::string sha, Sha256File(model_dir.Child(name)));
    absl::StrAppend(&listing, name, " ", sha, "\n");
  }
  return Sha256Hex(listing);
}

absl::StatusOr<std::string> ArtifactIdFor(const QuantizeRequest& request,
                                          const std::string& source_checksum) {
  ASSIGN_OR_RETURN(v1::WeightOnlyQuantConfig resolved, ResolveQuantConfig(request.config));
  std::string config_bytes;
  // Deterministic serialisation: the same config always hashes the same.
  {
    google::protobuf::io::StringOutputStream out(&config_bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);
    resolved.SerializeToCodedStream(&coded);
  }
  std::string model = request.model_id;
  std::replace(model.begin(), model.end(), '/', '_');
  const std::string digest =
      Sha256Hex(absl::StrCat(source_checksum, "\n", config_bytes)).substr(0, 10);
  return absl::StrCat(model, "-", QuantConfigSlug(resolved), "-", digest);
}

absl::StatusOr<v1::ArtifactManifest> QuantizeModel(const QuantizeRequest& request,
                                                   ArtifactStore& store) {
  ProgressReporter progress(request);
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(v1::WeightOnlyQuantConfig config, ResolveQuantConfig(request.config));
  progress.Report(QuantizePhase::kLoading, 0, 0, 0.0,
                  absl::StrCat("checksumming and loading ", request.model_id));
  ASSIGN_OR_RETURN(std::string checksum, ModelChecksum(request.model_dir));
  ASSIGN_OR_RETURN(std::string artifact_id, ArtifactIdFor(request, checksum));
  if (store.Exists(artifact_id)) {
    // A corrupt artifact would otherwise be handed out again on every
    // request: one that fails its checksums is moved aside and rebuilt.
    // Other failures (a newer format) are not this server's to discard.
    const absl::Status verified = store.Verify(artifact_id);
    if (verified.ok()) {
      progress.Report(QuantizePhase::kDone, 0, 0, 1.0,
                      absl::StrCat("artifact ", artifact_id, " already exists; reusing it"));
      return store.ReadManifest(artifact_id);
    }
    if (!absl::IsDataLoss(verified)) return verified;
    ASSIGN_OR_RETURN(std::string aside, store.Quarantine(artifact_id));
    LogWarning("artifact_quarantined", {{"artifact_id", artifact_id},
                                        {"moved_to", aside},
                                        {"reason", std::string(verified.message())}});
  }
  // The checkpoint is read one decoder block at a time, which is quantized and
  // written (AWQ / TEQ: transformed first, with that block's calibration
  // activations) and released before the next: memory holds about one block.
  // Its 16-bit matrices stay in the mapped file until a block converts them.
  ASSIGN_OR_RETURN(const LlamaConfig mc, LoadModelDirConfig(request.model_dir));
  CheckpointSource checkpoint;
  RETURN_IF_ERROR(
      checkpoint.Open(request.model_dir, FileBacking::kMapped, HalfWeights::kServeAsStored));
  ASSIGN_OR_RETURN(std::unique_ptr<ArtifactWriter> out, store.Create(artifact_id));
  v1::ArtifactManifest manifest;
  ArtifactTensors tensors(config, absl::StrCat(out->dir(), "/", kWeightsFile, ".spill"),
                          &manifest);
  const int blocks = mc.num_hidden_layers + 1;  // lm_head counts as one
  // AWQ / TEQ take most of a job's time: 70 % of the progress bar.
  const bool calibrated = config.algorithm() != v1::RTN;
  const double calibration_share = calibrated ? 0.7 : 0.0;
  const double quantize_start = 0.05 + calibration_share;
  const auto quantized_block = [&](int done) {
    progress.Report(QuantizePhase::kQuantizing, done, blocks,
                    quantize_start + (0.9 - quantize_start) * done / blocks,
                    absl::StrFormat("quantized block %d of %d", done, blocks));
  };
  // As stored in the checkpoint. Calibration reads its tokens' rows before
  // the first block is loaded, which releases it.
  ASSIGN_OR_RETURN(const LinearWeight embedding, LoadEmbedding(mc, checkpoint));
  RETURN_IF_ERROR(tensors.AddEmbedding(mc, embedding));
  // One block as an owned fp32 copy for AWQ / TEQ to transform, its
  // checkpoint pages dropped.
  const auto load_block = [&](int layer) -> absl::StatusOr<BlockWeights> {
    ASSIGN_OR_RETURN(const LlamaLayerWeights stored, LoadLayer(mc, checkpoint, layer));
    BlockWeights block = BlockWeights::Copy(stored, mc);
    checkpoint.ReleaseLoaded();
    return block;
  };
  std::vector<std::string> transform_log;
  if (calibrated) {
    const auto on_stage = [&](CalibrationStage stage, int block, int total,
                              const std::string& message) {
      const QuantizePhase phase = stage == CalibrationStage::kCapture ? QuantizePhase::kCalibration
                                  : stage == CalibrationStage::kGridSearch
                                      ? QuantizePhase::kGridSearch
                                      : QuantizePhase::kClipSearch;
      const double within = stage == CalibrationStage::kClipSearch ? 0.5 : 0.0;
      progress.Report(phase, block + 1, total,
                      0.05 + calibration_share * (block + within) / total, message);
    };
    // A model of the config and embedding alone: blocks come from load_block.
    auto skeleton = std::make_shared<LlamaWeights>();
    skeleton->config = mc;
    skeleton->embed = embedding;
    const LlamaModel model(skeleton);
    ASSIGN_OR_RETURN(
        transform_log,
        RunCalibratedTransform(
            model, load_block,
            [&](int layer, BlockWeights& block) {
              return tensors.AddBlock(mc, layer, block.View());
            },
            config, request.model_dir, request.data_root, request.cancelled, on_stage));
  } else {
    progress.Report(QuantizePhase::kQuantizing, 0, blocks, quantize_start, "quantizing");
    for (int i = 0; i < mc.num_hidden_layers; ++i) {
      RETURN_IF_ERROR(CheckCancelled(request.cancelled));
      // As stored: each linear is converted to fp32 only while it is quantized.
      ASSIGN_OR_RETURN(const LlamaLayerWeights layer, LoadLayer(mc, checkpoint, i));
      RETURN_IF_ERROR(tensors.AddBlock(mc, i, layer));
      checkpoint.ReleaseLoaded();
      quantized_block(i + 1);
    }
  }
  RETURN_IF_ERROR(CheckCancelled(request.cancelled));
  {
    ASSIGN_OR_RETURN(const float* final_norm, LoadFinalNorm(mc, checkpoint));
    ASSIGN_OR_RETURN(const LinearWeight tied, LoadEmbedding(mc, checkpoint));
    ASSIGN_OR_RETURN(const LinearWeight lm_head, LoadLmHead(mc, checkpoint, tied));
    RETURN_IF_ERROR(tensors.AddHead(mc, final_norm, lm_head));
    checkpoint.ReleaseLoaded();
    quantized_block(blocks);
  }
  RETURN_IF_ERROR(checkpoint.CheckAllUsed());
  RETURN_IF_ERROR(CheckCancelled(request.cancelled));

  progress.Report(QuantizePhase::kWriting, 0, 0, 0.9, "writing the artifact");
  RETURN_IF_ERROR(tensors.Write(absl::StrCat(out->dir(), "/", kWeightsFile)));
  for (const char* name : kCopiedFiles) {
    absl::StatusOr<std::string> contents = ReadFile(request.model_dir.Child(name));
    if (absl::IsNotFound(contents.status())) continue;
    if (!contents.ok()) return contents.status();
    RETURN_IF_ERROR(WriteFileDurably(absl::StrCat(out->dir(), "/", name), *contents));
  }
  const absl::Time now = absl::Now();
  manifest.mutable_create_time()->set_seconds(absl::ToUnixSeconds(now));
  manifest.set_source_model_id(request.model_id);
  manifest.set_source_checksum(checksum);
  *manifest.mutable_config() = config;
  manifest.set_quantizer(kQuantizerName);
  if (manifest.quantized_params() > 0) {
    manifest.set_bits_per_weight(tensors.quantized_bits() / manifest.quantized_params());
  }
  const int linear_layers = mc.num_hidden_layers * static_cast<int>(BlockLinears(mc).size()) + 1;
  manifest.add_log(absl::StrFormat("quantized %d of %d linear layers in %.2f s",
                                   static_cast<int>(std::count_if(
                                       manifest.tensors().begin(), manifest.tensors().end(),
                                       [](const auto& t) { return t.quantized(); })),
                                   linear_layers, absl::ToDoubleSeconds(now - start)));
  for (std::string& line : transform_log) manifest.add_log(std::move(line));
  if (!tensors.clip_log().empty()) {
    manifest.add_log(
        absl::StrCat("mse_range clip ratios: ", absl::StrJoin(tensors.clip_log(), ", ")));
  }
  RETURN_IF_ERROR(CheckCancelled(request.cancelled));
  RETURN_IF_ERROR(out->Commit(manifest));
  ASSIGN_OR_RETURN(v1::ArtifactManifest committed, store.ReadManifest(artifact_id));
  progress.Report(QuantizePhase::kDone, blocks, blocks, 1.0,
                  absl::StrCat("artifact ", artifact_id, " written"));
  return committed;
}

}  // namespace wq

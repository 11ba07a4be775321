// The artifact manifest reader: the input is an artifact's manifest.json.
// It is parsed from memory first; only a manifest that parses (rare) is
// written where ReadManifest must read it alike and Verify checks the files it
// lists, so most inputs never touch the filesystem.
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "common/artifact/artifact_store.h"
#include "fuzz/scratch_dir.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static wq::ArtifactStore* const store = [] {
    auto opened = wq::ArtifactStore::Open(wq::fuzz::ScratchDir());
    if (!opened.ok()) std::abort();
    return opened->release();
  }();
  const absl::string_view json(reinterpret_cast<const char*>(data), size);
  if (!wq::ParseManifest(json, "fuzzed").ok()) return 0;
  wq::fuzz::WriteScratchFile("fuzzed/manifest.json", data, size);
  if (!store->ReadManifest("fuzzed").ok()) __builtin_trap();
  (void)store->Verify("fuzzed");
  return 0;
}

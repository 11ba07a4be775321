// The artifact manifest reader: the input is an artifact's manifest.json.
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "common/artifact_store.h"
#include "fuzz/scratch_dir.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static wq::ArtifactStore* const store = [] {
    auto opened = wq::ArtifactStore::Open(wq::fuzz::ScratchDir());
    if (!opened.ok()) std::abort();
    return opened->release();
  }();
  wq::fuzz::WriteScratchFile("fuzzed/manifest.json", data, size);
  (void)store->ReadManifest("fuzzed");
  (void)store->Verify("fuzzed");
  return 0;
}

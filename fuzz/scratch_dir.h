// A per-process scratch directory for fuzz targets whose code under test
// reads files: each input is written to a file there and read back.
#ifndef WQ_FUZZ_SCRATCH_DIR_H_
#define WQ_FUZZ_SCRATCH_DIR_H_

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace wq::fuzz {

// The directory, created on first use under $TMPDIR (or /tmp) and removed at
// exit.
inline const std::string& ScratchDir() {
  static const std::string* const dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/wq_fuzz_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) std::abort();
    std::atexit([] { std::filesystem::remove_all(ScratchDir()); });
    return new std::string(pattern);
  }();
  return *dir;
}

// Writes the input to `relative` beneath the scratch directory; returns the
// absolute path.
inline std::string WriteScratchFile(const std::string& relative, const uint8_t* data,
                                    size_t size) {
  const std::filesystem::path path = std::filesystem::path(ScratchDir()) / relative;
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out.good()) std::abort();
  return path.string();
}

}  // namespace wq::fuzz

#endif  // WQ_FUZZ_SCRATCH_DIR_H_

#include "common/model/architecture.h"

namespace wq {

const ArchitectureSpec& SpecOf(Architecture id) {
  for (const ArchitectureSpec& spec : kArchitectures) {
    if (spec.id == id) return spec;
  }
  return kArchitectures[0];  // unreachable: every enumerator has a row
}

}  // namespace wq

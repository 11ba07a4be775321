#include "common/kernels/matmul.h"

#include <algorithm>
#include <iterator>
#include <optional>
#include <vector>

#include "Eigen/Core"
#include "absl/container/inlined_vector.h"
#include "absl/types/span.h"
#include "common/formats/bf16.h"
#include "common/io/parallel.h"
#include "common/kernels/cpu_features.h"
#include "common/kernels/kernels.h"
#include "tbb/blocked_range.h"
#include "tbb/partitioner.h"
#include "tbb/task_arena.h"

namespace wq {
namespace {

using kernels::KernelTable;
using kernels::QuantArgs;

// Reference: output rows per parallel task, enough to amortise scheduling.
constexpr int64_t kRefRowBlock = 64;
// SIMD kernels work on tiles of this many rows, the widest on pairs.
constexpr int64_t kSimdRowBlock = 2 * kernels::kTileRows;
// GemmF32: columns of C per Eigen product. Each product packs all of
// op(A), so wider blocks pack it less often; 256 still splits a 2048-wide
// output into 8 blocks to share among the threads.
constexpr int64_t kGemmColBlock = 256;
// Up to this many x rows a product streams W about once (memory bound).
constexpr int64_t kStaticPartitionMaxN = 4;

using RowMajor =
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Indexed by Isa; nullptr: the scalar reference.
using TableFn = const KernelTable& (*)();
constexpr TableFn kTables[] = {
    nullptr,
#define WQ_KERNEL_ISA(id, name, table, cpu_features) &kernels::table,
#include "common/kernels/isa_rows.inc"
#undef WQ_KERNEL_ISA
};
static_assert(std::size(kTables) == kNumIsas);

const KernelTable* TableOf(Isa isa) {
  const TableFn fn = kTables[static_cast<int>(isa)];
  return fn != nullptr ? &fn() : nullptr;
}

const KernelTable* ActiveTable() { return TableOf(ActiveIsa()); }

// Runs body(i, r0, r1) over rows [0, rows[i]) of every matrix i, in pieces
// aligned to kSimdRowBlock, as one parallel loop over all their rows.
// Matrix-vector products (decode) are short and memory bound: one contiguous
// piece per thread of the caller's arena (static partition) keeps scheduling
// to a minimum and lets each thread stream its own rows. Larger n is compute
// bound: about 8 pieces per thread so that threads finish together.
template <typename Body>
void ParallelRows(absl::Span<const int64_t> rows, int64_t n, const Body& body) {
  absl::InlinedVector<int64_t, 4> first_block{0};  // of each matrix, then the end
  for (const int64_t r : rows) {
    first_block.push_back(first_block.back() + (r + kSimdRowBlock - 1) / kSimdRowBlock);
  }
  const int64_t blocks = first_block.back();
  const int64_t threads = tbb::this_task_arena::max_concurrency();
  auto run = [&](const tbb::blocked_range<int64_t>& range) {
    for (size_t i = 0; i < rows.size(); ++i) {
      const int64_t b0 = std::max(range.begin(), first_block[i]);
      const int64_t b1 = std::min(range.end(), first_block[i + 1]);
      if (b0 >= b1) continue;
      body(i, (b0 - first_block[i]) * kSimdRowBlock,
           std::min(rows[i], (b1 - first_block[i]) * kSimdRowBlock));
    }
  };
  if (n <= kStaticPartitionMaxN) {
    ParallelFor(tbb::blocked_range<int64_t>(0, blocks), run, tbb::static_partitioner());
    return;
  }
  const int64_t grain = std::max<int64_t>(1, blocks / (8 * threads));
  ParallelFor(tbb::blocked_range<int64_t>(0, blocks, grain), run,
              tbb::simple_partitioner());
}

void RefF32(const float* w, int64_t rows, int64_t cols, const float* x,
            int64_t n, float* y) {
  const Eigen::Map<const RowMajor> wm(w, rows, cols);
  const Eigen::Map<const RowMajor> xm(x, n, cols);
  Eigen::Map<RowMajor> ym(y, n, rows);
  ParallelFor(
      tbb::blocked_range<int64_t>(0, rows, kRefRowBlock),
      [&](const tbb::blocked_range<int64_t>& range) {
        const int64_t len = range.end() - range.begin();
        ym.middleCols(range.begin(), len).noalias() =
            xm * wm.middleRows(range.begin(), len).transpose();
      });
}

// The kernel for a described call, or nullptr for the scalar reference.
using QuantRowsFn = void (*)(const QuantArgs&, int64_t, int64_t);
QuantRowsFn QuantKernel(const KernelTable* table, const QuantArgs& a) {
  return table != nullptr && a.simd_cols > 0 ? table->quant_rows[static_cast<int>(a.compute)]
                                             : nullptr;
}

// Whether that kernel reads a packed W (kernels.h PackedInt8Weights): every
// SIMD kernel does, and nothing else of W but columns past a.simd_cols.
bool ReadsPacked(const KernelTable* table, const QuantArgs& a) {
  return QuantKernel(table, a) != nullptr;
}

}  // namespace


void MatMulF32(const float* w, int64_t rows, int64_t cols, const float* x,
               int64_t n, float* y) {
  const KernelTable* table = ActiveTable();
  if (table == nullptr) return RefF32(w, rows, cols, x, n, y);
  ParallelRows({rows}, n, [&](size_t, int64_t r0, int64_t r1) {
    table->f32_rows(w, rows, cols, x, n, y, r0, r1);
  });
}

void GemmF32(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
             int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  const KernelTable* table = ActiveTable();
  const auto cols_fn = table != nullptr ? table->gemm_f32_cols : &kernels::GemmF32ColsRef;
  const kernels::GemmF32Args g{trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc};
  // Blocks of whole kGemmColBlock columns: their bounds depend on n only.
  const int64_t blocks = (n + kGemmColBlock - 1) / kGemmColBlock;
  ParallelFor(tbb::blocked_range<int64_t>(0, blocks, 1),
              [&](const tbb::blocked_range<int64_t>& range) {
                for (int64_t b = range.begin(); b < range.end(); ++b) {
                  cols_fn(g, b * kGemmColBlock, std::min(n, (b + 1) * kGemmColBlock));
                }
              });
}

void MatMulBf16(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n,
                float* y) {
  const KernelTable* table = ActiveTable();
  const auto rows_fn = table != nullptr ? table->dense_bf16_rows : &kernels::DenseBf16RowsRef;
  // x in bf16 lives in this thread's buffers until the product is done:
  // isolated, as MatMulQuantizedShared's activations.
  tbb::this_task_arena::isolate([&] {
    thread_local std::vector<float> xf;
    thread_local std::vector<uint16_t> xb16;
    const size_t count = static_cast<size_t>(n * cols);
    xf.resize(count);
    xb16.resize(count);
    for (size_t i = 0; i < count; ++i) {
      xb16[i] = FloatToBf16(x[i]);
      xf[i] = Bf16ToFloat(xb16[i]);
    }
    const kernels::Dense16Args args{w, rows, cols, n, xf.data(), xb16.data(), y};
    ParallelRows({rows}, n, [&](size_t, int64_t r0, int64_t r1) { rows_fn(args, r0, r1); });
  });
}

void MatMulF16(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n,
               float* y) {
  const KernelTable* table = ActiveTable();
  const auto rows_fn = table != nullptr ? table->dense_f16_rows : &kernels::DenseF16RowsRef;
  const kernels::Dense16Args args{w, rows, cols, n, x, nullptr, y};
  ParallelRows({rows}, n, [&](size_t, int64_t r0, int64_t r1) { rows_fn(args, r0, r1); });
}

std::shared_ptr<const PackedWeights> PackWeights(const QuantizedMatrixView& w,
                                                 ComputeDtype compute) {
  QuantArgs a;
  kernels::DescribeCall(w, compute, &a);
  if (!ReadsPacked(ActiveTable(), a)) return nullptr;
  return std::make_shared<const PackedWeights>(kernels::PackInt8Weights(a));
}

bool PackedCoversView(const QuantizedMatrixView& w, ComputeDtype compute) {
  QuantArgs a;
  kernels::DescribeCall(w, compute, &a);
  return ReadsPacked(ActiveTable(), a) && a.simd_cols == w.cols;
}

namespace {

// The int8 kernels' description of w, as Int8TileGeometryOf stores it.
QuantArgs Int8TilesCall(const QuantizedMatrixView& w) {
  QuantArgs a;
  kernels::DescribeCall(w, ComputeDtype::kInt8, &a);
  return a;
}

}  // namespace

std::optional<kernels::Int8TileGeometry> Int8TileGeometryOf(const QuantizedMatrixView& w) {
  const QuantArgs a = Int8TilesCall(w);
  if (a.compute != ComputeDtype::kInt8 || a.simd_cols != w.cols) return std::nullopt;
  return kernels::Int8TileLayout(a);
}

std::string Int8Tiles(const QuantizedMatrixView& w) {
  const QuantArgs a = Int8TilesCall(w);
  const PackedWeights layout(kernels::Int8TileLayout(a));
  std::string bytes(static_cast<size_t>(layout.bytes()), '\0');
  kernels::WriteInt8Tiles(a, layout, reinterpret_cast<uint8_t*>(bytes.data()));
  return bytes;
}

std::shared_ptr<const PackedWeights> MapInt8Tiles(const QuantizedMatrixView& w,
                                                  ComputeDtype compute, const uint8_t* tiles,
                                                  bool copy) {
  QuantArgs a;
  kernels::DescribeCall(w, compute, &a);
  if (!ReadsPacked(ActiveTable(), a)) return nullptr;
  if (copy) return std::make_shared<const PackedWeights>(kernels::CopyInt8Tiles(a, tiles));
  auto packed = std::make_shared<PackedWeights>(kernels::Int8TileLayout(a));
  packed->base = tiles;
  return packed;
}

QuantizedMatrix FromInt8Tiles(const QuantizedMatrixView& shape, const uint8_t* tiles) {
  QuantizedMatrix m;
  m.spec = shape.spec;
  m.rows = shape.rows;
  m.cols = shape.cols;
  m.group_size = shape.group_size;
  m.groups_per_row = shape.groups_per_row;
  m.row_bytes = shape.row_bytes;
  m.codes.resize(static_cast<size_t>(m.rows * m.row_bytes));
  m.scales.resize(static_cast<size_t>(m.rows * m.groups_per_row));
  if (m.spec.scheme == QuantScheme::kAsym) m.zeros.resize(m.scales.size());
  const QuantArgs a = Int8TilesCall(shape);
  PackedWeights layout(kernels::Int8TileLayout(a));
  layout.base = tiles;
  kernels::ReadInt8Tiles(a, layout, m.codes.data(), m.scales.data(),
                         m.zeros.empty() ? nullptr : m.zeros.data());
  return m;
}

int64_t PackedBytes(const PackedWeights& packed) { return packed.bytes(); }

ComputeDtype EffectiveCompute(const QuantizedMatrixView& w, ComputeDtype compute) {
  QuantArgs a;
  kernels::DescribeCall(w, compute, &a);
  return a.compute;
}

bool SharesActivations(const QuantizedMatrixView& a, const QuantizedMatrixView& b) {
  return a.cols == b.cols && a.group_size == b.group_size && a.spec.type == b.spec.type &&
         a.spec.scheme == b.spec.scheme;
}

void MatMulQuantized(const QuantizedMatrixView& w, const float* x, int64_t n,
                     float* y, ComputeDtype compute,
                     const PackedWeights* packed) {
  const QuantizedProduct product{&w, y, packed};
  MatMulQuantizedShared({&product, 1}, x, n, compute);
}

namespace {

void MatMulQuantizedIsolated(absl::Span<const QuantizedProduct> products, const float* x,
                             int64_t n, ComputeDtype compute) {
  const KernelTable* table = ActiveTable();
  // Tiles read in place have no row-major codes to fall back on: if the
  // ISA was forced lower after loading (tests, benchmarks), they still run
  // on the SIMD kernels, which read the same layout on every ISA.
  const QuantizedProduct& first = products.front();
  if (first.w->codes == nullptr && first.packed != nullptr && table == nullptr) {
    table = TableOf(BestSupportedIsa());
  }
  // The activations depend on x and on what SharesActivations compares, so
  // they are prepared once; each product gets its own weight and output.
  QuantArgs prepared;
  // Reused across calls: decode runs hundreds of these per token.
  thread_local kernels::ActivationBuffers buffers;
  const int64_t tile_min_rows =
      table != nullptr ? table->tile_min_rows[static_cast<int>(compute)] : 0;
  const bool tiles = tile_min_rows > 0 && n >= tile_min_rows;
  kernels::PrepareCall(*first.w, x, n, first.y, compute,
                       table != nullptr ? table->quantize_blocks
                                        : &kernels::QuantizeBlocksRef,
                       tiles, &prepared, &buffers);
  const QuantRowsFn fn = QuantKernel(table, prepared);
  absl::InlinedVector<QuantArgs, 3> args(products.size(), prepared);
  std::vector<PackedWeights> call_packed;  // for weights passed without one
  call_packed.reserve(products.size());
  absl::InlinedVector<int64_t, 3> rows;
  for (size_t i = 0; i < products.size(); ++i) {
    QuantArgs& a = args[i];
    a.w = products[i].w;
    a.y = products[i].y;
    rows.push_back(a.w->rows);
    if (ReadsPacked(table, a)) {
      a.packed = products[i].packed;
      if (a.packed == nullptr) {
        call_packed.push_back(kernels::PackInt8Weights(a));
        a.packed = &call_packed.back();
      }
    }
  }
  if (fn == nullptr) {
    for (const QuantArgs& a : args) {
      ParallelFor(tbb::blocked_range<int64_t>(0, a.w->rows, kRefRowBlock),
                  [&](const tbb::blocked_range<int64_t>& range) {
                    for (int64_t r = range.begin(); r != range.end(); ++r) {
                      kernels::RefRows(a, r, 0, false);
                    }
                  });
    }
    return;
  }
  ParallelRows(rows, n, [&](size_t i, int64_t r0, int64_t r1) { fn(args[i], r0, r1); });
}

}  // namespace

void MatMulQuantizedShared(absl::Span<const QuantizedProduct> products, const float* x,
                           int64_t n, ComputeDtype compute) {
  if (products.empty()) return;
  // The activations live in this thread's buffers until the product is done.
  // Isolated, a thread waiting in the parallel loops below runs only their
  // work, never an outer task that could call here again and reuse them.
  tbb::this_task_arena::isolate([&] { MatMulQuantizedIsolated(products, x, n, compute); });
}

}  // namespace wq

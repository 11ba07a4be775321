// What the kernels know about a bit width of the weight codes, one struct
// per width (as gemma.cpp's compression/ has a traits class per stored type,
// and ggml its type_traits), and DispatchBits, the one place a run-time
// width becomes its struct: nothing else in the kernels tests the width.
//
// Every CodeTraits<bits> has kBits, kMask, kRowBlockBytes (one 32-block of a
// packed row, quant_format.h Packing) and kTiled. A width with kTiled has
// the int8 tile layout (int8_tiles.h TileCodeBlock<bits>) and SIMD kernels,
// and with it:
//   kLevelTable: the kernels look codes up in a 16-entry level table in
//     registers, so any format runs; without one a code counts from level0,
//     so only affine formats do;
//   kBf16Pairs: a Bf16PairUnpack for native bf16 dot products;
//   RowToTileLanes / TileLanesToRow: a row's 32-block to its lane bytes in
//     the tile block (chunk c's at kLaneBytes * c) and back;
//   Int8Unpack<W>, FloatUnpack<W>: a tile block unpacked in the registers
//     of W (kernels_impl.h TileYmm, TilePairZmm) by Block(codes,
//     tile_stride, emit), which calls emit(step, value, col) with `value`
//     one code byte per column col .. col + 3 (int8) or the levels of column
//     col (fp32) for every row of the register.
// A width without kTiled has no SIMD kernels: DescribeCall gives it
// simd_cols 0 (the one fallback), so RefRows computes its products.
//
// In an anonymous namespace for the reason kernels_impl.h gives: the ISA
// units instantiate the unpack templates with their own -m flags.
#ifndef WQ_COMMON_KERNELS_CODE_TRAITS_H_
#define WQ_COMMON_KERNELS_CODE_TRAITS_H_

#include <emmintrin.h>  // SSE2: every x86-64 CPU.

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/kernels/int8_tiles.h"

namespace wq {
namespace kernels {
namespace {

template <int kWidth>
struct CodeBasics {
  static constexpr int kBits = kWidth;
  static constexpr uint32_t kMask = (1u << kWidth) - 1;
  // 32 codes: whole bytes for every width.
  static constexpr int kRowBlockBytes = kBlock * kWidth / 8;
  // The codes of a 32-block of a tile (kTiled widths only).
  using TileBlock = TileCodeBlock<kWidth>;
};

template <int kWidth>
struct CodeTraits;

// 8-bit: a code per byte. Lane j of chunk c of a tile block holds row j's
// columns 4c .. 4c + 3.
template <>
struct CodeTraits<8> : CodeBasics<8> {
  static constexpr bool kTiled = true;
  static constexpr bool kLevelTable = false;
  static constexpr bool kBf16Pairs = false;

  static void RowToTileLanes(const uint8_t* row, uint8_t* lanes) {
    std::memcpy(lanes, row, kRowBlockBytes);
  }
  static void TileLanesToRow(const uint8_t* lanes, uint8_t* row) {
    std::memcpy(row, lanes, kRowBlockBytes);
  }

  template <class W>
  struct Int8Unpack {
    template <class Emit>
    void Block(const uint8_t* codes, int64_t tile_stride, Emit&& emit) const {
#pragma GCC unroll 8
      for (int c = 0; c < TileBlock::kChunks; ++c) {
        emit(c, W::Codes(codes + c * sizeof(TileCodeChunk), tile_stride), 4 * c);
      }
    }
  };

  template <class W>
  struct FloatUnpack {
    explicit FloatUnpack(const float* /*lut*/) {}
    template <class Emit>
    void Block(const uint8_t* codes, int64_t tile_stride, Emit&& emit) const {
#pragma GCC unroll 8
      for (int c = 0; c < TileBlock::kChunks; ++c) {
        const typename W::I v = W::Codes(codes + c * sizeof(TileCodeChunk), tile_stride);
        emit(4 * c + 0, W::Float(W::And(v, byte_mask)), 4 * c);
        emit(4 * c + 1, W::Float(W::And(W::template Shr32<8>(v), byte_mask)), 4 * c + 1);
        emit(4 * c + 2, W::Float(W::And(W::template Shr32<16>(v), byte_mask)), 4 * c + 2);
        emit(4 * c + 3, W::Float(W::template Shr32<24>(v)), 4 * c + 3);
      }
    }
    typename W::I byte_mask = W::Dwords(kMask);
  };
};

// 4-bit: two codes per byte. Lane j of chunk c of a tile block holds row j's
// columns 4c .. 4c + 3 in the low nibbles and 16 + 4c .. 19 + 4c in the high
// ones, so one chunk register yields two registers of code bytes.
template <>
struct CodeTraits<4> : CodeBasics<4> {
  static constexpr bool kTiled = true;
  static constexpr bool kLevelTable = true;
  static constexpr bool kBf16Pairs = true;

  // Lane byte i holds column i's code in the low nibble and column i + 16's
  // above it. The row holds columns 2m | 2m+1 << 4 in byte m, so bytes m
  // and m + 8 give lane bytes 2m and 2m + 1: eight of each at once in
  // 64-bit words, then interleaved.
  static void RowToTileLanes(const uint8_t* row, uint8_t* lanes) {
    constexpr uint64_t kLow = 0x0f0f0f0f0f0f0f0full;
    uint64_t lo, hi;
    std::memcpy(&lo, row, 8);
    std::memcpy(&hi, row + 8, 8);
    const uint64_t even = (lo & kLow) | ((hi << 4) & ~kLow);
    const uint64_t odd = ((lo >> 4) & kLow) | (hi & ~kLow);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(lanes),
                     _mm_unpacklo_epi8(_mm_cvtsi64_si128(static_cast<int64_t>(even)),
                                       _mm_cvtsi64_si128(static_cast<int64_t>(odd))));
  }
  // The inverse: lane bytes 2m and 2m + 1 give row bytes m (their low
  // nibbles) and m + 8 (their high nibbles).
  static void TileLanesToRow(const uint8_t* lanes, uint8_t* row) {
    for (int m = 0; m < kBlock / 4; ++m) {
      const uint8_t even = lanes[2 * m], odd = lanes[2 * m + 1];
      row[m] = static_cast<uint8_t>((even & 0x0f) | (odd << 4));
      row[m + kBlock / 4] = static_cast<uint8_t>((even >> 4) | (odd & 0xf0));
    }
  }

  template <class W>
  struct Int8Unpack {
    template <class Emit>
    void Block(const uint8_t* codes, int64_t tile_stride, Emit&& emit) const {
#pragma GCC unroll 4
      for (int c = 0; c < TileBlock::kChunks; ++c) {
        const typename W::I v = W::Codes(codes + c * sizeof(TileCodeChunk), tile_stride);
        emit(2 * c, W::And(v, low4), 4 * c);
        emit(2 * c + 1, W::And(W::High4(v), low4), 16 + 4 * c);
      }
    }
    typename W::I low4 = W::Bytes(static_cast<char>(kMask));
  };

  // The levels by a lane's 4-bit index (W::Level reads a lane's low 4 bits).
  template <class W>
  struct FloatUnpack {
    explicit FloatUnpack(const float* lut) : levels(W::LevelTable(lut)) {}
    template <class Emit>
    void Block(const uint8_t* codes, int64_t tile_stride, Emit&& emit) const {
#pragma GCC unroll 4
      for (int c = 0; c < TileBlock::kChunks; ++c) {
        const typename W::I v = W::Codes(codes + c * sizeof(TileCodeChunk), tile_stride);
        // Nibble 2i of a lane is column 4c + i, nibble 2i + 1 column 16 + 4c + i.
        emit(8 * c + 0, W::Level(levels, v), 4 * c);
        emit(8 * c + 1, W::Level(levels, W::template Shr32<4>(v)), 16 + 4 * c);
        emit(8 * c + 2, W::Level(levels, W::template Shr32<8>(v)), 4 * c + 1);
        emit(8 * c + 3, W::Level(levels, W::template Shr32<12>(v)), 17 + 4 * c);
        emit(8 * c + 4, W::Level(levels, W::template Shr32<16>(v)), 4 * c + 2);
        emit(8 * c + 5, W::Level(levels, W::template Shr32<20>(v)), 18 + 4 * c);
        emit(8 * c + 6, W::Level(levels, W::template Shr32<24>(v)), 4 * c + 3);
        emit(8 * c + 7, W::Level(levels, W::template Shr32<28>(v)), 19 + 4 * c);
      }
    }
    typename W::Levels levels;
  };

  // For vdpbf16ps (AVX512_BF16): the levels as bf16 words of adjacent
  // columns, emit(step, pairs, col) with column pair (col, col + 1) in
  // every 32-bit lane. Each lane's bytes are reordered 0, 2, 1, 3: words
  // b0 | b2 << 8 and b1 | b3 << 8, so a 16-bit shift by 0, 4, 8, 12 puts
  // the codes of columns (4c, 4c+1), (16+4c, 17+4c), (4c+2, 4c+3),
  // (18+4c, 19+4c) in the words' low nibbles.
  template <class W>
  struct Bf16PairUnpack {
    explicit Bf16PairUnpack(const float* lut) {
      // vpermw zmm reads a word's low 5 bits: the 16 levels twice.
      alignas(64) uint16_t table[32];
      for (int c = 0; c < 32; ++c) {
        uint32_t bits;
        std::memcpy(&bits, &lut[c % 16], 4);  // bf16-rounded: exact in 16 bits.
        table[c] = static_cast<uint16_t>(bits >> 16);
      }
      levels = W::Bf16Levels(table);
      alignas(64) uint8_t order[64];
      for (int b = 0; b < 64; ++b) order[b] = static_cast<uint8_t>((b & ~3) | ((b & 1) << 1) | ((b >> 1) & 1));
      pair_order = W::Bf16Levels(reinterpret_cast<const uint16_t*>(order));
    }
    template <class Emit>
    void Block(const uint8_t* codes, int64_t tile_stride, Emit&& emit) const {
      constexpr int kPairColumn[4] = {0, 16, 2, 18};
#pragma GCC unroll 4
      for (int c = 0; c < TileBlock::kChunks; ++c) {
        const typename W::I v =
            W::Shuffle(W::Codes(codes + c * sizeof(TileCodeChunk), tile_stride), pair_order);
        const typename W::I idx[4] = {v, W::template Shr16<4>(v), W::template Shr16<8>(v),
                                      W::template Shr16<12>(v)};
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          emit(4 * c + q, W::Bf16Level(levels, idx[q]), 4 * c + kPairColumn[q]);
        }
      }
    }
    typename W::I levels, pair_order;
  };
};

// No tile layout yet: RefRows runs these widths (DescribeCall).
template <>
struct CodeTraits<3> : CodeBasics<3> {
  static constexpr bool kTiled = false;
};
template <>
struct CodeTraits<2> : CodeBasics<2> {
  static constexpr bool kTiled = false;
};

// The one table from a run-time width to its traits: f(CodeTraits<bits>()).
// Every width of the QuantFormat table needs its case here; DescribeCall
// dispatches every product, so kernels_test (all formats) aborts on a
// missing one.
template <typename F>
void DispatchBits(int bits, F&& f) {
  switch (bits) {
    case 8:
      return f(CodeTraits<8>());
    case 4:
      return f(CodeTraits<4>());
    case 3:
      return f(CodeTraits<3>());
    case 2:
      return f(CodeTraits<2>());
  }
  std::abort();
}

// DispatchBits for what only tiled widths have: f is not called for the
// others, whose tile layout is empty (simd_cols 0) and which never reach a
// SIMD kernel.
template <typename F>
void DispatchTiledBits(int bits, F&& f) {
  DispatchBits(bits, [&](auto code) {
    if constexpr (decltype(code)::kTiled) f(code);
  });
}

}  // namespace
}  // namespace kernels
}  // namespace wq

#endif  // WQ_COMMON_KERNELS_CODE_TRAITS_H_

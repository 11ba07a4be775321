// The int8 kernels' weight layout ("int8-tiles-v1", with bf16 scales
// "int8-tiles-bf16-v1") as typed blocks, as ggml's repack.h declares
// block_q4_0x8: the packer and reader (kernels_ref.cc), the SIMD kernels and
// the artifact reader (common/artifact/artifact_format.cc) all take sizes and
// offsets from these structs, so none of them can drift from the others.
//
// W's rows go in tiles of kTileRows (the last one padded with zero codes and
// scales). A tile is its groups' records one after another, and the record
// of one group is
//   TileCodeBlock<bits>  once per 32-column block of the group,
//   TileScalesF32        the tile's rows' scales of the group (or
//                        TileScalesBf16 when the weights' scales are bf16),
//   TileZeros            their zero points (asym only).
// Codes and scales keep the view's values (the level table and the int8
// weight scale apply at run time), so the layout depends on the format only,
// not on the CPU, and converts back exactly (kernels.h ReadInt8Tiles).
//
// An artifact stores the tiles as a U8 tensor at any byte offset, so a
// record is read with memcpy or unaligned vector loads, never through a
// pointer to a struct with wider members.
#ifndef WQ_COMMON_KERNELS_INT8_TILES_H_
#define WQ_COMMON_KERNELS_INT8_TILES_H_

#include <cstdint>

namespace wq {
namespace kernels {

inline constexpr int kBlock = 32;  // SIMD / int8 activation block.

// Row tile of the int8-compute weight layout: one 32-bit lane per W row.
inline constexpr int kTileRows = 8;
inline constexpr int kLaneBytes = 4;

// One lane per row of the tile, 4 code bytes each: one vpdpbusd multiplies a
// chunk with 4 broadcast activation bytes and sums 4 columns for 8 rows.
struct TileCodeChunk {
  uint8_t lane[kTileRows][kLaneBytes];
};
static_assert(sizeof(TileCodeChunk) == kTileRows * kLaneBytes);

// The codes of one 32-column block of a tile, in the lanes' order that the
// width's CodeTraits (code_traits.h) gives (8-bit: row j's lane in chunk c
// holds its columns 4c..4c+3).
template <int kBits>
struct TileCodeBlock {
  static constexpr int kChunks = kBlock * kBits / 8 / kLaneBytes;
  TileCodeChunk chunk[kChunks];
};
static_assert(sizeof(TileCodeBlock<4>) == kTileRows * kBlock / 2);
static_assert(sizeof(TileCodeBlock<8>) == kTileRows * kBlock);

// The group's scales of the tile's rows: fp32, or the bf16 bits of scales
// that are bf16 values (the same values in half the bytes, so decode streams
// 4.5 instead of 5 bits per 4-bit weight at group 32).
struct TileScalesF32 {
  float scale[kTileRows];
};
static_assert(sizeof(TileScalesF32) == kTileRows * 4);
struct TileScalesBf16 {
  uint16_t bits[kTileRows];
};
static_assert(sizeof(TileScalesBf16) == kTileRows * 2);

// The group's zero points of the tile's rows (asym only).
struct TileZeros {
  uint8_t zero[kTileRows];
};
static_assert(sizeof(TileZeros) == kTileRows);

// Sizes and offsets of one matrix's tiles, each from the structs above.
struct Int8TileGeometry {
  int64_t tiles = 0;          // ceil(rows / kTileRows).
  int64_t groups = 0;         // Group records per tile.
  int64_t block_bytes = 0;    // sizeof(TileCodeBlock<kBits>).
  int64_t scale_bytes = 4;    // Per scale: 4 (fp32) or 2 (bf16 bits).
  int64_t scales_offset = 0;  // Of the TileScales* in a group record.
  int64_t zeros_offset = 0;   // Of the TileZeros in a group record (asym).
  int64_t group_stride = 0;   // Bytes of one group record.
  int64_t tile_stride = 0;    // groups * group_stride.
  int64_t bytes() const { return tiles * tile_stride; }
};

// The tiles of `rows` rows of `groups` groups of `blocks_per_group` 32-blocks
// each, with kBits-bit codes.
template <int kBits>
Int8TileGeometry Int8TileGeometryFor(int64_t rows, int64_t groups, int64_t blocks_per_group,
                                     bool bf16_scales, bool asym) {
  Int8TileGeometry g;
  g.tiles = (rows + kTileRows - 1) / kTileRows;
  g.groups = groups;
  g.block_bytes = sizeof(TileCodeBlock<kBits>);
  g.scale_bytes = bf16_scales ? sizeof(TileScalesBf16::bits[0]) : sizeof(TileScalesF32::scale[0]);
  g.scales_offset = blocks_per_group * g.block_bytes;
  g.zeros_offset =
      g.scales_offset + (bf16_scales ? sizeof(TileScalesBf16) : sizeof(TileScalesF32));
  g.group_stride = g.zeros_offset + (asym ? sizeof(TileZeros) : 0);
  g.tile_stride = groups * g.group_stride;
  return g;
}

}  // namespace kernels
}  // namespace wq

#endif  // WQ_COMMON_KERNELS_INT8_TILES_H_

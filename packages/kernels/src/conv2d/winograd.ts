/**
 * 3×3 stride-1 convolutions by Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray, "Fast Algorithms for
 * Convolutional Neural Networks", 2015): each 4×4 block of output pixels of a channel pair is
 * Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A, with d the 6×6 input patch under the block and g the 3×3 kernel. Summed over input
 * channels, the elementwise products become 36 independent GEMMs,
 *
 *   M[ξ] (Cout × tiles) = U[ξ] (Cout × Cin) · V[ξ] (Cin × tiles),  U[ξ] = (G g Gᵀ)[ξ],  V[ξ] = (Bᵀ d B)[ξ],
 *
 * so a 4×4 block costs 36 multiply-adds per channel pair instead of 144: the same GEMM kernel does a quarter of
 * the direct convolution's arithmetic. Where a band has very few tiles (tileMajorTiles), or where forced
 * (windowedTileMajorTiles), the GEMMs run transposed ("tile-major"), Mᵀ[ξ] (tiles × Cout) = Vᵀ[ξ] · Uᵀ[ξ]: the
 * weights U are then the GEMM's B, which CPU adapters can read through uniform windows (matmul/tiles.ts), a window
 * set per position; V and M are then laid out tiles × channels. Three small kernels surround the GEMMs: the
 * weight transform (its output kept across calls within a budget, setWinogradCacheBudget; where it runs in every
 * call, the path is taken only where enough tiles share it), the input transform (x → V, 2.25× the input's size)
 * and the output transform (M → out, with the convolution's
 * bias, activation and residual epilogue). Tiles are processed in bands of whole tile rows so V and M stay
 * within BAND_BYTES; x, the output and the residual are bound a channel range at a time when they exceed one
 * storage binding, and output channels are taken in groups whose transformed weights fit one (1280 × 2560 × 36
 * f32 do not).
 *
 * Numerics: the transforms scale values by up to ~100 (Bᵀ's rows sum to 10 in absolute value) and back, so f32
 * rounding error is larger than the direct kernel's — tested against the float64 reference with its own
 * tolerance (conv2d.test.ts). Used on CPU adapters (conv2d's `winogradApplies`), where it was measured.
 */
import { type BufferSlice, type Device, DTYPE_BYTES, type DType, Tensor } from "@ldm/tensor";
import { type DerivedCache, derivedCache } from "../common/derived.ts";
import { type KernelDecl, runKernel } from "../common/kernel.ts";
import { type BindingLimits, bindingOf, bindingSlice, largest } from "../common/pieces.ts";
import { wgslAll } from "../common/wgsl.ts";
import type { Activation } from "../matmul/activation.ts";
import { deviceTiles, gemm } from "../matmul/index.ts";
import { type SubgroupTiles, type TileConfig, windowsPay } from "../matmul/tiles.ts";
import type { ConvOperands } from "./plan.ts";
import { convEpilogue, FINISH_PARAMS, outputBindings } from "./wgsl.ts";

/** Output block side (m) and input patch side (α = m + 2) of F(4×4, 3×3). */
const M = 4;
const ALPHA = M + 2;
const POSITIONS = ALPHA * ALPHA;

/** F(4, 3)'s matrices for correlation (the paper's, interpolation points 0, ±1, ±2, ∞). */
export const WINOGRAD_F4 = {
  BT: [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
  ],
  G: [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
  ],
  AT: [
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1],
  ],
} as const;

/** Bytes of V and of M per band of tile rows (each), at most one storage binding. */
const BAND_BYTES = 64 * 2 ** 20;
/**
 * Fewest tiles (4×4 output blocks) per image for which the path pays: the weight transform writes 4× the weights
 * each call, worth it only when enough tiles share them. Lavapipe, lavapipe threads' CPU time, 1280→1280 at
 * batch 2: 16×16 (16 tiles per image) 1.9× less than the direct kernel, 8×8 (4 tiles) 2× more. Per image, not
 * per batch, so a batch and its items one at a time (sequential CFG) take the same path and give the same bits.
 */
const MIN_TILES = 16;
/**
 * Fewest tiles per image where the transformed weights are kept across calls (no weight transform in the call):
 * lavapipe, CPU time, batch 2, 128→128 and 256→128 at 8×8 (4 tiles) 1.4–1.9× less than the direct kernel, at 4×4
 * (1 tile) 1.7–2.6× more (benchmarks/RESULTS.md, "Small convolutions").
 */
const MIN_TILES_KEPT = 4;
/**
 * Bytes of transformed weights kept per device by default (setWinogradCacheBudget): a 128→128 convolution's are
 * 2.4 MB, the built-in model's UNet 39 MiB (23 convolutions); SD 1.5's first few at 320 channels (15 MB each) fill it.
 */
export const WINOGRAD_CACHE_BYTES = 64 * 2 ** 20;
/** Fewest output channels: below, the GEMM's 16–24-row tiles mostly compute padding (e.g. RGB conv_out). */
const MIN_COUT = 16;

/** Σ coefficient · term as WGSL, zero coefficients skipped. */
function combination(coefficients: readonly number[], terms: readonly string[]): string {
  const parts: string[] = [];
  coefficients.forEach((c, k) => {
    if (c === 0) return;
    const sign = c < 0 ? "-" : "+";
    const magnitude = Math.abs(c);
    parts.push(`${sign} ${magnitude === 1 ? terms[k] : `${magnitude} * ${terms[k]}`}`);
  });
  if (!parts.length) return "0.0";
  const text = parts.join(" ");
  return text.startsWith("+ ") ? text.slice(2) : `-${text.slice(2)}`;
}

/** `let` statements of L · X · Rᵀ for a rows×inner matrix L, X of named entries, and R (cols×inner). */
function sandwich(
  L: readonly (readonly number[])[],
  x: (i: number, j: number) => string,
  R: readonly (readonly number[])[],
  out: string,
  tmp: string,
): string[] {
  const inner = L[0].length;
  const xCols = R[0].length;
  const lines: string[] = [];
  for (let i = 0; i < L.length; i++) {
    for (let j = 0; j < xCols; j++) {
      const column = Array.from({ length: inner }, (_, k) => x(k, j));
      lines.push(`let ${tmp}${i}_${j} = ${combination(L[i], column)};`);
    }
  }
  for (let i = 0; i < L.length; i++) {
    for (let j = 0; j < R.length; j++) {
      const row = Array.from({ length: xCols }, (_, k) => `${tmp}${i}_${k}`);
      lines.push(`let ${out}${i}_${j} = ${combination(R[j], row)};`);
    }
  }
  return lines;
}

const { BT, G, AT } = WINOGRAD_F4;

/** U[ξ, co, ci] = (G g Gᵀ)[ξ] for the 3×3 kernel g = w[co, ci]: an item per channel pair. */
const WINOGRAD_WEIGHTS: KernelDecl<{ w: DType }> = {
  name: "winograd-weights",
  params: { pairs: "u32", wOff: "u32" },
  bindings: ({ w }) => [
    { name: "Wt", type: w },
    { name: "U", type: "f32", access: "read_write" },
  ],
  workgroupSize: 64,
  main: () =>
    [
      "  let base = p.wOff + item * 9u;",
      ...Array.from({ length: 9 }, (_, k) => `  let g${Math.floor(k / 3)}_${k % 3} = f32(Wt[base + ${k}u]);`),
      ...sandwich(G, (i, j) => `g${i}_${j}`, G, "u", "t").map((l) => `  ${l}`),
      ...Array.from(
        { length: POSITIONS },
        (_, xi) => `  U[${xi}u * p.pairs + item] = u${Math.floor(xi / ALPHA)}_${xi % ALPHA};`,
      ),
    ].join("\n"),
};

/**
 * What the input transform does to x while reading it, so that the tensor the convolution sees is never
 * stored: groupNorm's per-channel affine map (coefficients from groupNormCoefficients) and SiLU, then nearest ×2
 * upsampling — the order of a ResBlock's norm → SiLU → (up-)resample → conv and of Upsample's interpolate → conv.
 */
export interface WinogradInput {
  /** [B, Cin, 3] f32 (centre, scale, offset) per channel: x ↦ (x − centre) · scale + offset. */
  coefficients?: Tensor;
  silu?: boolean;
  /** x is half the convolution's input size: each pixel stands for a 2×2 block. */
  upsample?: boolean;
}

/**
 * Params of a transform's item: channel c of the bound range (the kernel's count of them, from c0 of V's or M's
 * `width` channels) and tile `column` of the band (`tiles` per image, `images` images side by side).
 */
const ITEM_PARAMS = {
  tiles: "u32",
  images: "u32",
  tilesW: "u32",
  row0: "u32",
  c0: "u32",
  width: "u32",
  positionStride: "u32",
} as const;

/**
 * The item's channel c (of `count`), image, tile origin (y0, x0) in output pixels, and its index `at` in V or M
 * (position ξ at ξ · positionStride + at): channel-major [width, columns] with tiles along the lanes, or tile-major
 * [columns, width] with channels along them, so that neighbouring lanes write or read neighbouring elements.
 */
function tileItem(tileMajor: boolean, count: string): string[] {
  return [
    "  let columns = p.images * p.tiles;",
    tileMajor ? `  let column = item / ${count};` : "  let column = item % columns;",
    tileMajor ? `  let c = item % ${count};` : "  let c = item / columns;",
    "  let t = column % p.tiles;",
    "  let image = column / p.tiles;",
    `  let y0 = (p.row0 + t / p.tilesW) * ${M}u;`,
    `  let x0 = (t % p.tilesW) * ${M}u;`,
    tileMajor ? "  let at = column * p.width + p.c0 + c;" : "  let at = (p.c0 + c) * columns + column;",
  ];
}

interface InputSpec {
  x: DType;
  /** V[ξ] is columns × Cin (the tile-major GEMM's A), else Cin × columns. */
  tileMajor: boolean;
  /** "affine" / "affine-silu": the normalisation of WinogradInput, none without coefficients. */
  map: "none" | "affine" | "affine-silu";
  /**
   * With upsampling, the parities of the top and left padding: a tile's 6×6 patch of the upsampled input then
   * reads a fixed 3×3 or 4×4 block of x (16 loads or fewer instead of 36).
   */
  upsample: readonly [number, number] | null;
}

/** `d${i}_${j}` of the 6×6 patch as WGSL: x read at patch row i, column j (through the upsampling's block). */
function patchLoads(spec: InputSpec): string[] {
  const lines: string[] = [];
  if (!spec.upsample) {
    for (let k = 0; k < POSITIONS; k++) {
      const [i, j] = [Math.floor(k / ALPHA), k % ALPHA];
      lines.push(`let d${i}_${j} = xin(plane, ih0 + ${i}, iw0 + ${j}, k);`);
    }
    return lines;
  }
  // Upsampled row ih0 + i is x's row (ih0 + i) >> 1 = s0 + ((i + parity) >> 1) with s0 = ih0 >> 1 (arithmetic).
  const [pt, pl] = spec.upsample;
  const block = (i: number, parity: number) => (i + parity) >> 1;
  const rows = block(ALPHA - 1, pt) + 1;
  const cols = block(ALPHA - 1, pl) + 1;
  lines.push("let s0 = ih0 >> 1u;", "let t0 = iw0 >> 1u;");
  for (let a = 0; a < rows; a++) {
    for (let b = 0; b < cols; b++) lines.push(`let b${a}_${b} = xin(plane, s0 + ${a}, t0 + ${b}, k);`);
  }
  for (let k = 0; k < POSITIONS; k++) {
    const [i, j] = [Math.floor(k / ALPHA), k % ALPHA];
    lines.push(`let d${i}_${j} = b${block(i, pt)}_${block(j, pl)};`);
  }
  return lines;
}

/**
 * V[ξ, ci, t] (or V[ξ, t, ci], tile-major) = (Bᵀ d B)[ξ] for the 6×6 patch d of input channel ci under tile t of
 * the band (zeros outside the image), d read through WinogradInput's map: an item per (channel of the bound
 * range, tile of the band of each of `images` images, whose tiles follow each other along t).
 * H and W are x's (half the convolution's input with upsampling); V's width is Cin.
 */
const WINOGRAD_INPUT: KernelDecl<InputSpec> = {
  name: "winograd-input",
  params: {
    ...ITEM_PARAMS,
    channels: "u32",
    H: "u32",
    W: "u32",
    padTop: "i32",
    padLeft: "i32",
    xOff: "u32",
    xImage: "u32",
    coef0: "u32",
  },
  bindings: (s) => [
    { name: "X", type: s.x },
    { name: "V", type: "f32", access: "read_write" },
    ...(s.map !== "none" ? [{ name: "Coef", type: "f32" }] : []),
  ],
  workgroupSize: 64,
  // The map is groupNorm's expression and SiLU, rounded to x's dtype as groupNorm's output would be, so that
  // the transform sees the unfused path's bits; padding zeros are the map's output's, not x's.
  module: (s) => `
fn xin(plane: u32, ih: i32, iw: i32, k: vec3f) -> f32 {
  let inside = ${wgslAll("ih >= 0", "ih < i32(p.H)", "iw >= 0", "iw < i32(p.W)")};
  let at = plane + u32(clamp(ih, 0, i32(p.H) - 1)) * p.W + u32(clamp(iw, 0, i32(p.W) - 1));
  var y = f32(X[at]);
  ${s.map === "none" ? "" : "y = (y - k.x) * k.y + k.z;"}
  ${s.map === "affine-silu" ? "y = y / (1.0 + exp(-y));" : ""}
  ${s.map !== "none" && s.x !== "f32" ? `y = f32(${s.x}(y));` : ""}
  return select(0.0, y, inside);
}`,
  main: (s) =>
    [
      ...tileItem(s.tileMajor, "p.channels"),
      "  let ih0 = i32(y0) - p.padTop;",
      "  let iw0 = i32(x0) - p.padLeft;",
      "  let plane = p.xOff + image * p.xImage + c * p.H * p.W;",
      s.map === "none"
        ? "  let k = vec3f(0.0);"
        : "  let kAt = (p.coef0 + image * p.width + c) * 3u;\n  let k = vec3f(Coef[kAt], Coef[kAt + 1u], Coef[kAt + 2u]);",
      ...patchLoads(s).map((l) => `  ${l}`),
      ...sandwich(BT, (i, j) => `d${i}_${j}`, BT, "v", "s").map((l) => `  ${l}`),
      ...Array.from(
        { length: POSITIONS },
        (_, xi) => `  V[${xi}u * p.positionStride + at] = v${Math.floor(xi / ALPHA)}_${xi % ALPHA};`,
      ),
    ].join("\n"),
};

interface OutputSpec {
  out: DType;
  /** M[ξ] is columns × Cout (the tile-major GEMM's output), else Cout × columns. */
  tileMajor: boolean;
  bias: DType | null;
  residual: DType | null;
  activation: Activation;
  vecOut: boolean;
}

/**
 * out = Aᵀ M[·, co, t] A (or M[·, t, co], tile-major) for output channel co (of the bound range, `cout` of them)
 * and tile t of the band, through the convolution's epilogue (bias, activation, residual): an item per (channel,
 * tile of each of `images` images), four rows of four pixels. M's width is the channel group's.
 */
const WINOGRAD_OUTPUT: KernelDecl<OutputSpec> = {
  name: "winograd-output",
  params: { ...ITEM_PARAMS, ...FINISH_PARAMS },
  bindings: (s) => [{ name: "Mt", type: "f32" }, ...outputBindings(s)],
  workgroupSize: 64,
  module: (s) => convEpilogue(s),
  main: (s) =>
    [
      ...tileItem(s.tileMajor, "p.cout"),
      ...Array.from(
        { length: POSITIONS },
        (_, xi) => `  let m${Math.floor(xi / ALPHA)}_${xi % ALPHA} = Mt[${xi}u * p.positionStride + at];`,
      ),
      ...sandwich(AT, (i, j) => `m${i}_${j}`, AT, "y", "s").map((l) => `  ${l}`),
      ...Array.from(
        { length: M },
        (_, r) =>
          `  finish4(image, c, y0 + ${r}u, x0, y0 + ${r}u < p.Ho, 0u, vec4f(${[0, 1, 2, 3].map((c) => `y${r}_${c}`).join(", ")}));`,
      ),
    ].join("\n"),
};

export interface WinogradCall extends ConvOperands {
  padTop: number;
  padLeft: number;
  limits: BindingLimits;
  input: WinogradInput;
  /** Tiles of the batched GEMMs instead of tileMajorTiles' or the heuristic's; uniformB ones make them tile-major. */
  gemmTiles?: TileConfig;
}

/**
 * The tile-major GEMMs' tiles, or null where the GEMMs stay channel-major (U · V, whose broadcast rows are output
 * channels and whose lanes own tiles). Tile-major, with the heuristic's storage-B tiles, where the band has fewer
 * tiles (problem.M) than the lanes of a channel-major subgroup own (4 each): there most of those lanes would compute
 * padding (8×8 at batch 2 is 8 tiles, a quarter of 32), while tile-major they own output channels and the few tiles
 * are broadcast rows. Not where the heuristic's tiles read windows (windowedTileMajorTiles): on a quiet machine
 * channel-major ran as fast or faster on SD's shapes (benchmarks/RESULTS.md, "Winograd channel-major again").
 */
export function tileMajorTiles(
  heuristic: TileConfig,
  problem: { M: number; N: number; K: number; windowSets: number },
): SubgroupTiles | null {
  if (heuristic.kind !== "subgroup" || heuristic.uniformB) return null;
  return problem.M < heuristic.lanes * 4 && heuristic.laneOwns === "n" ? heuristic : null;
}

/**
 * Tile-major GEMMs reading U through windows, for benchmarks and tests to force (`gemmTiles`), or null where the
 * heuristic's tiles (`heuristic`, for the tile-major problem) would not read windows or they do not pay: 4
 * subgroups × 16 rows and 2 groups of 4 owned columns per lane, so every window's dispatch reads the band's V[ξ]
 * whole and 64 output channels a window halve those reads against the heuristic's 32. They ran 10–16% faster
 * than channel-major on a loaded machine, but on a quiet one slower on most of SD's shapes (GPU time, interleaved:
 * 320 → 320 @ 64² ×2 122 against 93 ms, 512 → 256 @ 256² 1307 against 1175) and faster only on 256 → 256 @ 128²
 * (177 against 227).
 */
export function windowedTileMajorTiles(
  heuristic: TileConfig,
  problem: { M: number; N: number; K: number; windowSets: number },
): SubgroupTiles | null {
  if (heuristic.kind !== "subgroup" || !heuristic.uniformB) return null;
  const rows = Math.ceil(16 / heuristic.lanes) * heuristic.lanes;
  const tiles: SubgroupTiles = { ...heuristic, subgroups: 4, rows, cols: 2, laneOwns: "n", uniformB: true };
  return windowsPay(tiles, problem) ? tiles : null;
}

/** Tile rows per band: V and M of a band each within BAND_BYTES (and one binding); 0 if one row is too much. */
function bandRows(cin: number, cout: number, tilesW: number, tilesH: number, limits: BindingLimits): number {
  const budget = Math.min(BAND_BYTES, limits.maxBindingBytes);
  const perRow = POSITIONS * Math.max(cin, cout) * tilesW * 4;
  return Math.min(tilesH, Math.floor(budget / perRow));
}

/** Whether a convolution takes the Winograd path (see the module comment), given its geometry. */
export function winogradApplies(g: {
  isCpu: boolean;
  kh: number;
  kw: number;
  strideH: number;
  strideW: number;
  cin: number;
  cout: number;
  H: number;
  W: number;
  Ho: number;
  Wo: number;
  limits: BindingLimits;
  /** The transformed weights are kept across calls (winogradWeightsKept): the call skips the weight transform. */
  weightsKept: boolean;
}): boolean {
  if (!g.isCpu || g.kh !== 3 || g.kw !== 3 || g.strideH !== 1 || g.strideW !== 1 || g.cout < MIN_COUT) return false;
  const tilesH = Math.ceil(g.Ho / M);
  const tilesW = Math.ceil(g.Wo / M);
  // Planes are bound whole (a channel range at a time); a larger one is left to the direct path's planner.
  const planeFits = channelsPerBinding(1, Math.max(g.H * g.W, g.Ho * g.Wo), 4, g.limits) === 1;
  const minTiles = g.weightsKept ? MIN_TILES_KEPT : MIN_TILES;
  return planeFits && tilesH * tilesW >= minTiles && bandRows(g.cin, g.cout, tilesW, tilesH, g.limits) > 0;
}

/** Channels per binding of a [channels, plane] range, whole planes, starting anywhere (0: not even one). */
function channelsPerBinding(channels: number, plane: number, bytes: number, limits: BindingLimits): number {
  const fits = (c: number) => c * plane * bytes + limits.offsetAlignment + 16 <= limits.maxBindingBytes;
  return fits(1) ? largest(channels, fits) : 0;
}

/** The device's kept transformed weights (common/derived.ts). */
function weightCache(device: Device): DerivedCache {
  return derivedCache(device, "winograd-weights", WINOGRAD_CACHE_BYTES);
}

/**
 * Keeps up to `bytes` of transformed weights U across calls on `device` (default WINOGRAD_CACHE_BYTES; 0 transforms
 * the weights in every call and frees what was kept). Kept weights let the path take smaller images (MIN_TILES_KEPT).
 */
export function setWinogradCacheBudget(device: Device, bytes: number): void {
  weightCache(device).setBudget("setWinogradCacheBudget", bytes);
}

/** What the transformed-weight cache of `device` holds: entries, their bytes and the budget. */
export function winogradCacheStats(device: Device): { entries: number; bytes: number; budget: number } {
  return weightCache(device).stats();
}

/** Output channels whose transformed weights U fit one binding: all of them below SD's widest layers. */
function weightStep(cin: number, cout: number, limits: BindingLimits): number {
  return largest(cout, (c) => POSITIONS * c * cin * 4 <= limits.maxBindingBytes);
}

/** The cache key of w's transformed weights. */
function weightKey(w: Tensor): string {
  return `${w.dtype}:${w.shape.join("x")}`;
}

/**
 * Whether the Winograd path would use kept transformed weights of w (held and valid, or room to keep them): only
 * where they are one tensor (one group of output channels).
 */
export function winogradWeightsKept(w: Tensor, limits: BindingLimits): boolean {
  const [cout, cin] = w.shape;
  if (weightStep(cin, cout, limits) !== cout) return false;
  return weightCache(w.device).keeps(w, weightKey(w), POSITIONS * cout * cin * 4);
}

/**
 * Ranges [c0, c1) of `channels`, at most `step` each, as few as that allows and of even sizes: 128 channels
 * of a 128 MiB tensor are 64 + 64, not 127 and a sliver of 1 that costs a dispatch of its own.
 */
function ranges(channels: number, step: number): [number, number][] {
  const count = Math.ceil(channels / step);
  const size = Math.ceil(channels / count);
  return Array.from({ length: count }, (_, i) => [i * size, Math.min(channels, (i + 1) * size)]);
}

/** A binding of elements [first, first + count) of `t`, and the first one's index inside it. */
function slice(t: Tensor, first: number, count: number, limits: BindingLimits): [BufferSlice, number] {
  const b = bindingOf([first, first + count - 1], DTYPE_BYTES[t.dtype], limits.offsetAlignment);
  return [bindingSlice(t, b), b.elementOffset];
}

export function conv2dWinograd(device: Device, call: WinogradCall): void {
  const { x, w, out, bias, residual, activation, limits, input } = call;
  const [batch, cin, H, W] = x.shape;
  const [, cout, Ho, Wo] = out.shape;
  const tilesH = Math.ceil(Ho / M);
  const tilesW = Math.ceil(Wo / M);
  const rowsPerBand = bandRows(cin, cout, tilesW, tilesH, limits);
  if (rowsPerBand === 0) {
    throw new Error(
      `conv2d: the Winograd path cannot bind one row of ${tilesW} tiles of x ${x} (needs ${POSITIONS * Math.max(cin, cout) * tilesW * 4} bytes)`,
    );
  }
  const xStep = channelsPerBinding(cin, H * W, DTYPE_BYTES[x.dtype], limits);
  const outBytes = Math.max(DTYPE_BYTES[out.dtype], residual ? DTYPE_BYTES[residual.dtype] : 0);
  const outStep = channelsPerBinding(cout, Ho * Wo, outBytes, limits);
  if (xStep === 0 || outStep === 0) {
    throw new Error(`conv2d: the Winograd path binds whole planes; one of x ${x} or the output does not fit a binding`);
  }
  const uStep = weightStep(cin, cout, limits);
  // All images in one pass of each kernel (GEMMs over their tiles side by side: fewer dispatches, fuller tiles)
  // where x, the output and U each fit one binding and V and M of all images one band; else image by image.
  // A GEMM's sums run along k alone, so both give the same bits.
  const whole = (t: Tensor) => t.size * DTYPE_BYTES[t.dtype] + limits.offsetAlignment + 16 <= limits.maxBindingBytes;
  const together =
    uStep === cout &&
    whole(x) &&
    whole(out) &&
    (!residual || whole(residual)) &&
    bandRows(cin, cout, batch * tilesW, tilesH, limits) === tilesH;
  const images = together ? batch : 1;
  const coefficients = input.coefficients;
  const inputSpec: Omit<InputSpec, "tileMajor"> = {
    x: x.dtype,
    map: coefficients ? (input.silu ? "affine-silu" : "affine") : "none",
    upsample: input.upsample ? [call.padTop % 2, call.padLeft % 2] : null,
  };
  const spec: Omit<OutputSpec, "tileMajor"> = {
    out: out.dtype,
    bias: bias?.dtype ?? null,
    residual: residual?.dtype ?? null,
    activation,
    vecOut: Wo % 4 === 0,
  };
  /** U[ξ, co, ci] for output channels [u0, u1). */
  const transformed = (u0: number, u1: number): Tensor => {
    const U = Tensor.empty(device, [POSITIONS, u1 - u0, cin], "f32");
    const [ws, wOff] = slice(w, u0 * cin * 9, (u1 - u0) * cin * 9, limits);
    runKernel(
      device,
      WINOGRAD_WEIGHTS,
      { w: w.dtype },
      {
        count: (u1 - u0) * cin,
        params: { pairs: (u1 - u0) * cin, wOff },
        buffers: { Wt: ws, U: U.slice() },
      },
    );
    return U;
  };
  for (const [u0, u1] of ranges(cout, uStep)) {
    // One group of output channels: U is all of w's, kept across calls where the cache has room.
    const { value: U, owned } =
      uStep === cout
        ? weightCache(device).get(w, weightKey(w), () => transformed(u0, u1))
        : { value: transformed(u0, u1), owned: true };
    try {
      convolveChannels(U, u0, u1);
    } finally {
      if (owned) U.dispose();
    }
  }

  /** Output channels [u0, u1), whose transformed weights U is. */
  function convolveChannels(U: Tensor, u0: number, u1: number): void {
    for (let b = 0; b < batch; b += images) {
      for (let row0 = 0; row0 < tilesH; row0 += rowsPerBand) {
        const tiles = Math.min(rowsPerBand, tilesH - row0) * tilesW;
        const columns = images * tiles;
        const width = u1 - u0;
        const problem = { M: columns, N: width, K: cin, windowSets: POSITIONS };
        const forced = call.gemmTiles;
        const majorTiles = forced
          ? null
          : tileMajorTiles(deviceTiles(device, { ...problem, transposeA: false, transposeB: true }), problem);
        // Forced tiles that read B through windows make the GEMMs tile-major (tests, benchmarks).
        const tileMajor = forced ? forced.kind === "subgroup" && forced.uniformB : majorTiles !== null;
        const V = Tensor.empty(device, [POSITIONS, ...(tileMajor ? [columns, cin] : [cin, columns])], "f32");
        const product = Tensor.empty(device, [POSITIONS, ...(tileMajor ? [columns, width] : [width, columns])], "f32");
        const item = { tiles, images, tilesW, row0 };
        try {
          // Together, x fits one binding, so one range holds every channel (of every image).
          for (const [c0, c1] of ranges(cin, xStep)) {
            const [xs, xOff] = slice(x, (b * cin + c0) * H * W, ((images - 1) * cin + c1 - c0) * H * W, limits);
            runKernel(
              device,
              WINOGRAD_INPUT,
              { ...inputSpec, tileMajor },
              {
                count: (c1 - c0) * columns,
                params: {
                  ...item,
                  c0,
                  width: cin,
                  positionStride: cin * columns,
                  channels: c1 - c0,
                  H,
                  W,
                  padTop: call.padTop,
                  padLeft: call.padLeft,
                  xOff,
                  xImage: cin * H * W,
                  coef0: b * cin + c0,
                },
                buffers: { X: xs, V: V.slice(), ...(coefficients ? { Coef: coefficients.slice() } : {}) },
              },
            );
          }
          // M[ξ] = U[ξ] · V[ξ], or Mᵀ[ξ] = Vᵀ[ξ] · U[ξ]ᵀ with U [width, cin] read transposed.
          const operands = tileMajor ? { a: V, b: U, M: columns, N: width } : { a: U, b: V, M: width, N: columns };
          gemm({
            op: "conv2d",
            ...operands,
            out: product,
            batch: POSITIONS,
            K: cin,
            transposeA: false,
            transposeB: tileMajor,
            aBatchStride: operands.M * cin,
            bBatchStride: operands.N * cin,
            activation: "none",
            alpha: 1,
            bindingLimits: limits,
            tiles: forced ?? majorTiles ?? undefined,
            // Channel-major, B is V: packing it would be a second pass over the largest tensor.
            windowsPerItem: tileMajor,
          });
          // Together, the output fits one binding, so one range holds every channel (of every image).
          for (const [r0, r1] of ranges(width, outStep)) {
            const [c0, c1] = [u0 + r0, u0 + r1];
            const first = (b * cout + c0) * Ho * Wo;
            const length = ((images - 1) * cout + c1 - c0) * Ho * Wo;
            const [cs, cOff] = slice(out, first, length, limits);
            const [rs, rOff] = residual ? slice(residual, first, length, limits) : [null, 0];
            runKernel(
              device,
              WINOGRAD_OUTPUT,
              { ...spec, tileMajor },
              {
                count: (c1 - c0) * columns,
                params: {
                  ...item,
                  c0: r0,
                  width,
                  positionStride: width * columns,
                  cout: c1 - c0,
                  Ho,
                  Wo,
                  blocksPerRow: 0,
                  cBatch: cout * Ho * Wo,
                  cOff,
                  rOff,
                  biasOff: c0,
                  accumulate: 0,
                  finalize: 1,
                  slices: 1,
                  sliceStride: 0,
                },
                buffers: {
                  Mt: product.slice(),
                  C: cs,
                  ...(bias ? { Bias: bias.slice() } : {}),
                  ...(rs ? { R: rs } : {}),
                },
              },
            );
          }
        } finally {
          V.dispose();
          product.dispose();
        }
      }
    }
  }
}

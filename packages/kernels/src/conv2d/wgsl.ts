/**
 * WGSL for the direct (implicit-GEMM) convolution kernel on NCHW.
 *
 * Each invocation computes `rows` output channels × 4 consecutive output pixels of one output row. Per
 * input channel and kernel row it reads the input row window those 4 pixels see (3·stride + kw values,
 * shared by all kw taps) and one weight per tap and channel, and accumulates outer products. On CPU
 * adapters the channels' weights are read once per subgroup and shared with subgroupBroadcast (see
 * matmul/tiles.ts for why); elsewhere each invocation reads its own.
 */
import type { DType } from "@ldm/tensor";
import type { KernelBinding, KernelDecl } from "../common/kernel.ts";
import { wgslAll } from "../common/wgsl.ts";
import type { Activation } from "../matmul/activation.ts";
import { accumulatorsWgsl, EPILOGUE_PARAMS, epilogueWgsl } from "../matmul/epilogue.ts";
import { evenSubgroups, spreadSubgroups } from "../matmul/tiles.ts";
import { operandBinding, operandReaders } from "../matmul/wgsl.ts";

/** `rows` output channels × `groups` blocks of 4 consecutive pixels per invocation. */
export type ConvTiles =
  | { kind: "subgroup"; lanes: number; subgroups: number; rows: number; groups: number }
  | { kind: "plain"; rows: number; groups: number; pixelLanes: number; channelGroups: number };

export interface ConvTileInputs {
  isCpu: boolean;
  subgroupSize: number | null;
  maxInvocations: number;
  cout: number;
  /** Output width: a lane's pixels stay within one output row. */
  wo: number;
  /** Output rows and batch items: the pixel blocks that lanes take (over all images) are batch · ho · wo / block. */
  ho: number;
  batch: number;
}

export function chooseConvTiles(inp: ConvTileInputs): ConvTiles {
  const lanes = inp.subgroupSize;
  if (inp.isCpu && lanes !== null && [4, 8, 16].includes(lanes)) {
    // 16 channels × 8 pixels per lane, with register accumulators (matmul/epilogue.ts): the most GFLOP per
    // CPU-second of the shapes timed on lavapipe (benchmarks/RESULTS.md, "Measurements behind kernel choices").
    const rows = Math.max(16, lanes);
    const groups = Math.min(2, Math.ceil(inp.wo / 4));
    const maxSubgroups = Math.max(1, Math.min(8, Math.floor(inp.maxInvocations / lanes)));
    // Subgroups stack along the channels; few enough for lavapipe's threads to share the work, and dividing the
    // channel tiles evenly (matmul/tiles.ts).
    const channelTiles = Math.ceil(inp.cout / rows);
    const pixelTiles = Math.ceil((inp.batch * inp.ho * Math.ceil(inp.wo / (4 * groups))) / lanes);
    const spread = spreadSubgroups(Math.min(maxSubgroups, channelTiles), channelTiles * pixelTiles);
    const subgroups = evenSubgroups(spread, channelTiles);
    return { kind: "subgroup", lanes, subgroups, rows, groups };
  }
  // GPUs take 8 output channels per invocation (what autotuning SD 1.5's UNet on an H200 chose for 18 of its
  // 19 3×3 classes), except with at most 4 output channels, where half of each invocation's rows would idle.
  // CPU adapters without fixed subgroups (SwiftShader) keep 4. Numbers: benchmarks/RESULTS.md, "GPU script".
  return {
    kind: "plain",
    rows: inp.isCpu || inp.cout <= 4 ? 4 : 8,
    groups: 1,
    pixelLanes: 16,
    channelGroups: Math.min(4, Math.floor(inp.maxInvocations / 16)),
  };
}

/** Configs worth timing (autotune): the heuristic's first, then other channel × pixel tiles. */
export function convTileCandidates(inp: ConvTileInputs): ConvTiles[] {
  const chosen = chooseConvTiles(inp);
  if (chosen.kind === "plain") {
    return [chosen, { ...chosen, rows: chosen.rows === 8 ? 4 : 8 }, { ...chosen, pixelLanes: 8, channelGroups: 8 }];
  }
  const maxGroups = Math.ceil(inp.wo / 4);
  const shapes = [
    [chosen.rows, chosen.groups],
    [8, 1],
    [8, 2],
    [16, 1],
  ].filter(([rows, groups]) => rows % chosen.lanes === 0 && groups <= maxGroups);
  return shapes.map(([rows, groups]) => ({
    ...chosen,
    rows,
    groups,
    subgroups: Math.min(chosen.subgroups, Math.max(1, Math.ceil(inp.cout / rows))),
  }));
}

/** Whether a value (from an autotune cache) is a tile config the convolution kernel can run. */
export function isConvTiles(v: unknown): v is ConvTiles {
  if (typeof v !== "object" || v === null) return false;
  const t = v as Record<string, unknown>;
  const positive = (...names: string[]) => names.every((n) => Number.isInteger(t[n]) && (t[n] as number) > 0);
  if (t.kind === "subgroup") {
    return positive("lanes", "subgroups", "rows", "groups") && (t.rows as number) % (t.lanes as number) === 0;
  }
  return t.kind === "plain" && positive("rows", "groups", "pixelLanes", "channelGroups");
}

/** Output channels and pixel blocks (of 4 · groups pixels) one workgroup covers, and its invocation count. */
export function convWorkgroup(t: ConvTiles): { channels: number; blocks: number; size: number } {
  return t.kind === "subgroup"
    ? { channels: t.subgroups * t.rows, blocks: t.lanes, size: t.lanes * t.subgroups }
    : { channels: t.channelGroups * t.rows, blocks: t.pixelLanes, size: t.pixelLanes * t.channelGroups };
}

/** The kernel window and how it steps; the bottom and right padding only bound the output size. */
export interface ConvWindow {
  kh: number;
  kw: number;
  strideH: number;
  strideW: number;
  padTop: number;
  padLeft: number;
}

export interface ConvKernelSpec extends ConvWindow {
  tiles: ConvTiles;
  x: DType;
  w: DType;
  out: DType;
  bias: DType | null;
  residual: DType | null;
  activation: Activation;
  /** Wo is a multiple of 4: the output and residual are accessed as vec4. */
  vecOut: boolean;
  /**
   * Stride 1, W a multiple of 4 and Wo ≤ W: the 4 input columns under the 4 pixels (iw = ow0 .. ow0+3)
   * are one aligned vector inside the row, read through a second vec4 binding of x.
   */
  vecRow: boolean;
}

/** Whether the row-vector read of `vecRow` applies to a geometry. */
export function rowVectorizable(strideW: number, W: number, Wo: number, padLeft: number, kw: number): boolean {
  return strideW === 1 && W % 4 === 0 && Wo <= W && padLeft < kw;
}

/** Kernel taps up to this many are unrolled over kernel rows too (one loop iteration per input channel). */
const UNROLL_TAPS = 16;

/** The uniforms of the convolution's finish4 and of the slice sums, shared by both kernels. */
export const FINISH_PARAMS = {
  cout: "u32",
  Ho: "u32",
  Wo: "u32",
  blocksPerRow: "u32",
  ...EPILOGUE_PARAMS,
  slices: "u32",
  sliceStride: "u32",
} as const;

export type Finishing = Pick<ConvKernelSpec, "out" | "residual" | "activation" | "vecOut" | "bias">;

/** What the epilogue reads and writes: C, then Bias and R where the spec has them. */
export function outputBindings(s: Finishing): KernelBinding[] {
  const vec = (t: string) => (s.vecOut ? `vec4<${t}>` : t);
  return [
    { name: "C", type: vec(s.out), access: "read_write" },
    ...(s.bias ? [{ name: "Bias", type: s.bias }] : []),
    ...(s.residual ? [{ name: "R", type: vec(s.residual) }] : []),
  ];
}

/**
 * The direct convolution: a workgroup per item, which is one reduction slice × tile of output channels and pixel
 * blocks (those of all batch items, in order); a slice sums its own input channels.
 */
export const CONV2D: KernelDecl<ConvKernelSpec> = {
  name: "conv2d",
  params: {
    batch: "u32",
    cin: "u32",
    H: "u32",
    W: "u32",
    xBatch: "u32",
    xOff: "u32",
    wCo: "u32",
    wOff: "u32",
    tilesX: "u32",
    tilesY: "u32",
    tileRows: "u32",
    ciPer: "u32",
    ...FINISH_PARAMS,
  },
  bindings: (s) => [
    { name: "X", type: s.x },
    { name: "Wt", type: s.w },
    ...outputBindings(s),
    // The row-vector view of x: a second binding of the same slice.
    ...(s.vecRow ? [operandBinding("Xv", s.x, true)] : []),
  ],
  workgroupSize: (s) => convWorkgroup(s.tiles).size,
  itemsPerWorkgroup: 1,
  enables: (s) => (s.tiles.kind === "subgroup" ? ["subgroups"] : []),
  module: (s) => `
${s.vecRow ? operandReaders("Xv", s.x, true) : ""}
${convEpilogue(s)}
// Input value at column iw of a row starting at \`row\`, zero outside the image (padding).
fn xin(row: u32, iw: i32, rowOk: bool) -> f32 {
  let inside = ${wgslAll("rowOk", "iw >= 0", "iw < i32(p.W)")};
  return select(0.0, f32(X[row + u32(clamp(iw, 0, i32(p.W) - 1))]), inside);
}`,
  main: (s) => {
    const t = s.tiles;
    const shared = t.kind === "subgroup";
    const wg = convWorkgroup(t);
    const rows = t.rows;
    const G = t.groups;
    // Weight rows read by this invocation: one per \`lanes\` channels when shared, else its own channels.
    const loaders = shared ? rows / t.lanes : rows;
    const weightRows = Array.from({ length: loaders }, (_, i) => {
      const co = shared ? `co0 + lane + ${i * t.lanes}u` : `co0 + ${i}u`;
      return `  let wr${i} = p.wOff + min(${co}, p.cout - 1u) * p.wCo;`;
    });
    const acc = accumulatorsWgsl(rows * G);
    const kernelRows =
      s.kh * s.kw <= UNROLL_TAPS
        ? Array.from({ length: s.kh }, (_, dy) => `    {\n${tapRow(s, `${dy}u`, acc.name)}\n    }`).join("\n")
        : `    for (var dy = 0u; dy < ${s.kh}u; dy++) {\n${tapRow(s, "dy", acc.name)}\n    }`;
    return `
  let perSlice = p.tilesX * p.tilesY;
  let slice = item / perSlice;
  let tile = item % perSlice;
  let co0 = (tile / p.tilesY) * ${wg.channels}u + (lid / ${wg.blocks}u) * ${rows}u;
  // Pixel blocks run over every batch item's output rows, so the lanes of a small image's tile are not idle.
  let blk = (tile % p.tilesY) * ${wg.blocks}u + ${shared ? "lane" : `lid % ${wg.blocks}u`};
  let blocks = p.Ho * p.blocksPerRow;
  let valid = blk < p.batch * blocks;
  let bb = min(blk, p.batch * blocks - 1u);
  let bi = bb / blocks;
  let b = bb % blocks;
  let oh = b / p.blocksPerRow;
  let ow0 = (b % p.blocksPerRow) * ${4 * G}u;
  let ihBase = i32(oh * ${s.strideH}u) - ${s.padTop};
  let iwBase = i32(ow0 * ${s.strideW}u) - ${s.padLeft};
  let xBase = p.xOff + bi * p.xBatch;
${weightRows.join("\n")}
${acc.declare}
  for (var ci = slice * p.ciPer; ci < min(p.cin, (slice + 1u) * p.ciPer); ci++) {
    let plane = xBase + ci * p.H * p.W;
    let wci = ci * ${s.kh * s.kw}u;
${kernelRows}
  }
${acc.collect}
  // A uniform bound keeps the compiler from unrolling the epilogue (see matmul/wgsl.ts).
  for (var i = 0u; i < p.tileRows; i++) {
    finish4(bi, co0 + i / ${G}u, oh, ow0 + (i % ${G}u) * 4u, valid, slice * p.sliceStride, acc[i]);
  }`;
  },
};

/**
 * One kernel row (dy) of the window for every input column the invocation's pixels see, unrolled: the row's
 * inputs v<c>, the weights w<i>_<dx>, then one fma per output channel, pixel group and tap.
 */
function tapRow(s: ConvKernelSpec, dy: string, accName: (i: number) => string): string {
  const t = s.tiles;
  const shared = t.kind === "subgroup";
  const rows = t.rows;
  const G = t.groups;
  const loaders = shared ? rows / t.lanes : rows;
  const used = new Set<number>();
  for (let j = 0; j < 4 * G; j++) for (let dx = 0; dx < s.kw; dx++) used.add(j * s.strideW + dx);
  const b: string[] = [];
  b.push(`let ih = ihBase + i32(${dy});`);
  b.push(`let rowOk = ${wgslAll("ih >= 0", "ih < i32(p.H)")};`);
  b.push("let row = plane + u32(clamp(ih, 0, i32(p.H) - 1)) * p.W;");
  // Column c of the window is input column iwBase + c = ow0 − padLeft + c.
  // Group g's vector holds columns padLeft + 4g .. +3. W is a multiple of 4, so a vector lies wholly inside
  // the row or wholly past its end, where it is right padding (zeros): the last pixels' taps read it.
  const vectorCol = (c: number) => (s.vecRow && c >= s.padLeft && c < s.padLeft + 4 * G ? c - s.padLeft : -1);
  if (s.vecRow) {
    for (let g = 0; g < G; g++) {
      b.push(
        `let mid${g} = select(vec4f(0.0), Xv4((row + min(ow0 + ${4 * g}u, p.W - 4u)) >> 2u), ${wgslAll("rowOk", `ow0 + ${4 * g}u < p.W`)});`,
      );
    }
  }
  for (const c of [...used].sort((x, y) => x - y)) {
    const j = vectorCol(c);
    b.push(j >= 0 ? `let v${c} = mid${j >> 2}[${j & 3}];` : `let v${c} = xin(row, iwBase + ${c}, rowOk);`);
  }
  for (let i = 0; i < loaders; i++) {
    for (let dx = 0; dx < s.kw; dx++) b.push(`let w${i}_${dx} = f32(Wt[wr${i} + wci + ${dy} * ${s.kw}u + ${dx}u]);`);
  }
  for (let r = 0; r < rows; r++) {
    for (let dx = 0; dx < s.kw; dx++) {
      const w = shared ? `subgroupBroadcast(w${Math.floor(r / t.lanes)}_${dx}, ${r % t.lanes}u)` : `w${r}_${dx}`;
      b.push(`{ let wv = vec4f(${w});`);
      for (let g = 0; g < G; g++) {
        const xs = [0, 1, 2, 3].map((j) => `v${(4 * g + j) * s.strideW + dx}`).join(", ");
        const sum = accName(r * G + g);
        b.push(`  ${sum} = fma(wv, vec4f(${xs}), ${sum});`);
      }
      b.push("}");
    }
  }
  return b.map((l) => `      ${l}`).join("\n");
}

/**
 * finish4 of the convolution: four consecutive pixels of one output row, at \`sliceOff\` elements past the
 * output's (a reduction slice's partial sums).
 */
export function convEpilogue(s: Finishing): string {
  return epilogueWgsl({
    out: s.out,
    residual: s.residual,
    activation: s.activation,
    alpha: false,
    vec: s.vecOut,
    params: "bi: u32, co: u32, oh: u32, ow0: u32, valid: bool, sliceOff: u32",
    locate: `  let live = select(min(p.Wo - min(ow0, p.Wo), 4u), 0u, !valid || co >= p.cout);
  let at = p.cOff + sliceOff + bi * p.cBatch + (co * p.Ho + oh) * p.Wo + ow0;
  let rat = p.rOff + bi * p.cBatch + (co * p.Ho + oh) * p.Wo + ow0;`,
    bias: s.bias ? "vec4f(f32(Bias[p.biasOff + co]))" : null,
  });
}

/** Invocations per workgroup of the slice-summing kernel. */
const REDUCE_WORKGROUP = 64;

/**
 * The second pass of a convolution whose reduction ran in slices: an item per invocation, which sums the
 * slices' f32 partial outputs (P, \`sliceStride\` apart) for four pixels of one output row, then applies the
 * epilogue (bias, activation, residual) and stores them.
 */
export const CONV2D_REDUCE: KernelDecl<Finishing> = {
  name: "conv2d-reduce",
  params: FINISH_PARAMS,
  bindings: (s) => [{ name: "P", type: "f32" }, ...outputBindings(s)],
  workgroupSize: REDUCE_WORKGROUP,
  module: convEpilogue,
  main: `
  let blocks = p.Ho * p.blocksPerRow;
  let bi = item / (p.cout * blocks);
  let co = (item / blocks) % p.cout;
  let oh = (item % blocks) / p.blocksPerRow;
  let ow0 = (item % p.blocksPerRow) * 4u;
  let live = min(p.Wo - ow0, 4u);
  let at = bi * p.cBatch + (co * p.Ho + oh) * p.Wo + ow0;
  var acc = vec4f(0.0);
  for (var slice = 0u; slice < p.slices; slice++) {
    let src = at + slice * p.sliceStride;
    // One statement per live pixel, not acc[j] in a loop (matmul/epilogue.ts says why).
    acc.x += P[src];
    if (live > 1u) { acc.y += P[src + 1u]; }
    if (live > 2u) { acc.z += P[src + 2u]; }
    if (live > 3u) { acc.w += P[src + 3u]; }
  }
  finish4(bi, co, oh, ow0, true, 0u, acc);`,
};

/** Invocations a GPU keeps busy: below it, a convolution's reduction is split into slices (H200: ~270,000). */
const BUSY_INVOCATIONS = 1 << 18;

/**
 * Reduction slices for a convolution on a GPU: as many as bring its invocations near BUSY_INVOCATIONS, at
 * most 8, each over at least 32 input channels; 1 on CPU adapters, whose few threads are busy already.
 * Low-resolution layers need it (H200: a 1280-channel 3×3 convolution took 1.8 ms at 8×8 as at 16×16: the
 * time was each invocation's serial reduction).
 */
export function reductionSlices(inp: { isCpu: boolean; cin: number; invocations: number }): number {
  if (inp.isCpu || inp.invocations <= 0) return 1;
  const wanted = Math.floor(BUSY_INVOCATIONS / inp.invocations);
  return Math.max(1, Math.min(8, wanted, Math.floor(inp.cin / 32)));
}

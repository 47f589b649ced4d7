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
import { LINEAR_WORKGROUP_ID } from "../common/grid.ts";
import { wgslAll } from "../common/wgsl.ts";
import type { Activation } from "../matmul/activation.ts";
import { accumulatorsWgsl, epilogueWgsl } from "../matmul/epilogue.ts";
import { operandArray, operandReaders } from "../matmul/wgsl.ts";

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
}

export function chooseConvTiles(inp: ConvTileInputs): ConvTiles {
  const lanes = inp.subgroupSize;
  if (inp.isCpu && lanes !== null && [4, 8, 16].includes(lanes)) {
    // 16 channels × 8 pixels per lane, with register accumulators (matmul/epilogue.ts). CPU time per
    // convolution on lavapipe, interleaved runs (320→320 @ 64², 1280→1280 @ 16²): 16 × 8 took 18.4 and
    // 23.4 GFLOP per CPU-second, 8 × 8 18.9 / 19.8, 16 × 16 17.2 / 22.1, 8 × 16 15.7 / 16.9, 32 × 4–8
    // 10–13 / 19–22; the array accumulators used before ran 8 × 8 at 16.1 / 16.0.
    const rows = Math.max(16, lanes);
    const groups = Math.min(2, Math.ceil(inp.wo / 4));
    const maxSubgroups = Math.max(1, Math.min(8, Math.floor(inp.maxInvocations / lanes)));
    const subgroups = Math.min(maxSubgroups, Math.max(1, Math.ceil(inp.cout / rows)));
    return { kind: "subgroup", lanes, subgroups, rows, groups };
  }
  // GPUs take 8 output channels per invocation: autotuning SD 1.5's UNet on an H200 chose 8 over 4 for 18 of
  // its 19 3×3 classes (mostly 15–22% less GPU time each; the UNet call 137.7 → 130.6 ms with 8 as the rule).
  // The exception, conv_out with 4 output channels, took 0.19 ms with 4 and 0.29 with 8 (half of each
  // invocation's rows idle). CPU adapters without fixed subgroups (SwiftShader) keep 4, as measured.
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

export const CONV_PARAMS = [
  "batch",
  "cin",
  "cout",
  "H",
  "W",
  "Ho",
  "Wo",
  "blocksPerRow",
  "xBatch",
  "xOff",
  "wCo",
  "wOff",
  "cBatch",
  "cOff",
  "rOff",
  "biasOff",
  "accumulate",
  "finalize",
  "tilesX",
  "tilesY",
  "tileRows",
  "slices",
  "ciPer",
  "sliceStride",
] as const;

export function convKey(s: ConvKernelSpec): string {
  const t = s.tiles;
  const tiles =
    t.kind === "subgroup"
      ? `sg${t.lanes}x${t.subgroups}r${t.rows}g${t.groups}`
      : `pl${t.rows}g${t.groups}x${t.pixelLanes}x${t.channelGroups}`;
  const geometry = `${s.kh}x${s.kw}s${s.strideH}x${s.strideW}p${s.padTop}x${s.padLeft}`;
  const access = `${s.vecOut ? "v" : "s"}${s.vecRow ? "v" : "s"}`;
  return `conv2d:${tiles}:${geometry}:${s.x}${s.w}${s.out}:${s.bias ?? "-"}:${s.residual ?? "-"}:${s.activation}:${access}`;
}

/** Kernel taps up to this many are unrolled over kernel rows too (one loop iteration per input channel). */
const UNROLL_TAPS = 16;

export function convWgsl(s: ConvKernelSpec): string {
  const t = s.tiles;
  const shared = t.kind === "subgroup";
  const dtypes = [s.x, s.w, s.out, s.bias, s.residual];
  const enables = [...(dtypes.includes("f16") ? ["f16"] : []), ...(shared ? ["subgroups"] : [])];
  const out: string[] = [];
  out.push(enables.map((e) => `enable ${e};`).join("\n"));
  out.push(`struct Params { ${CONV_PARAMS.map((f) => `${f}: u32,`).join(" ")} }`);
  out.push("@group(0) @binding(0) var<uniform> p: Params;");
  out.push(`@group(0) @binding(1) var<storage, read> X: array<${s.x}>;`);
  out.push(`@group(0) @binding(2) var<storage, read> Wt: array<${s.w}>;`);
  out.push(...outputBindings(s, 3));
  let binding = 4 + (s.bias ? 1 : 0) + (s.residual ? 1 : 0);
  if (s.vecRow) out.push(operandArray("Xv", binding++, s.x, true), operandReaders("Xv", s.x, true));
  out.push(convEpilogue(s));
  // Input value at column iw of a row starting at `row`, zero outside the image (padding).
  out.push("fn xin(row: u32, iw: i32, rowOk: bool) -> f32 {");
  out.push(`  let inside = ${wgslAll("rowOk", "iw >= 0", "iw < i32(p.W)")};`);
  out.push("  return select(0.0, f32(X[row + u32(clamp(iw, 0, i32(p.W) - 1))]), inside);");
  out.push("}");

  const wg = convWorkgroup(t);
  const rows = t.rows;
  out.push(`@compute @workgroup_size(${wg.size})`);
  out.push(
    `fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lidx: u32${shared ? ", @builtin(subgroup_invocation_id) lane: u32" : ""}) {`,
  );
  out.push(`  let id = ${LINEAR_WORKGROUP_ID};`);
  // Workgroups run over reduction slices × batch items × tiles; a slice sums its own input channels.
  out.push("  let perBatch = p.tilesX * p.tilesY;");
  out.push("  if (id >= p.slices * p.batch * perBatch) { return; }");
  out.push("  let slice = id / (p.batch * perBatch);");
  out.push("  let bi = (id / perBatch) % p.batch;");
  out.push("  let tile = id % perBatch;");
  if (shared) {
    out.push(`  let co0 = (tile / p.tilesY) * ${wg.channels}u + (lidx / ${t.lanes}u) * ${rows}u;`);
    out.push(`  let blk = (tile % p.tilesY) * ${t.lanes}u + lane;`);
  } else {
    out.push(`  let co0 = (tile / p.tilesY) * ${wg.channels}u + (lidx / ${t.pixelLanes}u) * ${rows}u;`);
    out.push(`  let blk = (tile % p.tilesY) * ${t.pixelLanes}u + lidx % ${t.pixelLanes}u;`);
  }
  out.push("  let blocks = p.Ho * p.blocksPerRow;");
  out.push("  let valid = blk < blocks;");
  out.push("  let b = min(blk, blocks - 1u);");
  out.push("  let oh = b / p.blocksPerRow;");
  out.push(`  let ow0 = (b % p.blocksPerRow) * ${4 * t.groups}u;`);
  out.push(`  let ihBase = i32(oh * ${s.strideH}u) - ${s.padTop};`);
  out.push(`  let iwBase = i32(ow0 * ${s.strideW}u) - ${s.padLeft};`);
  out.push("  let xBase = p.xOff + bi * p.xBatch;");
  // Weight rows read by this invocation: one per `lanes` channels when shared, else its own channels.
  const loaders = shared ? rows / t.lanes : rows;
  for (let i = 0; i < loaders; i++) {
    const co = shared ? `co0 + lane + ${i * t.lanes}u` : `co0 + ${i}u`;
    out.push(`  let wr${i} = p.wOff + min(${co}, p.cout - 1u) * p.wCo;`);
  }
  const G = t.groups;
  const acc = accumulatorsWgsl(rows * G);
  out.push(acc.declare);
  out.push("  for (var ci = slice * p.ciPer; ci < min(p.cin, (slice + 1u) * p.ciPer); ci++) {");
  out.push("    let plane = xBase + ci * p.H * p.W;");
  out.push(`    let wci = ci * ${s.kh * s.kw}u;`);
  const used = new Set<number>();
  for (let j = 0; j < 4 * G; j++) for (let dx = 0; dx < s.kw; dx++) used.add(j * s.strideW + dx);
  const tapRow = (dy: string, indent: string) => {
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
          const sum = acc.name(r * G + g);
          b.push(`  ${sum} = fma(wv, vec4f(${xs}), ${sum});`);
        }
        b.push("}");
      }
    }
    return b.map((l) => indent + l).join("\n");
  };
  if (s.kh * s.kw <= UNROLL_TAPS) {
    for (let dy = 0; dy < s.kh; dy++) out.push(`    {\n${tapRow(`${dy}u`, "      ")}\n    }`);
  } else {
    out.push(`    for (var dy = 0u; dy < ${s.kh}u; dy++) {\n${tapRow("dy", "      ")}\n    }`);
  }
  out.push("  }");
  out.push(acc.collect);
  // A uniform bound keeps the compiler from unrolling the epilogue (see matmul/wgsl.ts).
  out.push(
    `  for (var i = 0u; i < p.tileRows; i++) { finish4(bi, co0 + i / ${G}u, oh, ow0 + (i % ${G}u) * 4u, valid, slice * p.sliceStride, acc[i]); }`,
  );
  out.push("}");
  return out.join("\n");
}

/**
 * finish4 of the convolution: four consecutive pixels of one output row, at `sliceOff` elements past the
 * output's (a reduction slice's partial sums).
 */
function convEpilogue(s: Pick<ConvKernelSpec, "out" | "residual" | "activation" | "vecOut" | "bias">): string {
  return epilogueWgsl({
    out: s.out,
    residual: s.residual,
    activation: s.activation,
    alpha: false,
    vec: s.vecOut,
    params: "bi: u32, co: u32, oh: u32, ow0: u32, valid: bool, sliceOff: u32",
    locate: [
      "  let live = select(min(p.Wo - min(ow0, p.Wo), 4u), 0u, !valid || co >= p.cout);",
      "  let at = p.cOff + sliceOff + bi * p.cBatch + (co * p.Ho + oh) * p.Wo + ow0;",
      "  let rat = p.rOff + bi * p.cBatch + (co * p.Ho + oh) * p.Wo + ow0;",
    ].join("\n"),
    bias: s.bias ? "vec4f(f32(Bias[p.biasOff + co]))" : null,
  });
}

/** What the epilogue reads and writes, from binding `first` on: C, then Bias and R where the spec has them. */
function outputBindings(s: Pick<ConvKernelSpec, "out" | "residual" | "vecOut" | "bias">, first: number): string[] {
  const vec = (t: string) => (s.vecOut ? `vec4<${t}>` : t);
  const lines = [`@group(0) @binding(${first}) var<storage, read_write> C: array<${vec(s.out)}>;`];
  let binding = first + 1;
  if (s.bias) lines.push(`@group(0) @binding(${binding++}) var<storage, read> Bias: array<${s.bias}>;`);
  if (s.residual) lines.push(`@group(0) @binding(${binding++}) var<storage, read> R: array<${vec(s.residual)}>;`);
  return lines;
}

/** Invocations per workgroup of the slice-summing kernel. */
export const REDUCE_WORKGROUP = 64;

/**
 * The second pass of a convolution whose reduction ran in slices: each invocation sums the slices' f32
 * partial outputs (P, `sliceStride` apart) for four pixels of one output row, then applies the epilogue
 * (bias, activation, residual) and stores them.
 */
export function convReduceWgsl(s: Pick<ConvKernelSpec, "out" | "residual" | "activation" | "vecOut" | "bias">): string {
  const dtypes = [s.out, s.bias, s.residual];
  const out: string[] = [];
  if (dtypes.includes("f16")) out.push("enable f16;");
  out.push(`struct Params { ${CONV_PARAMS.map((f) => `${f}: u32,`).join(" ")} }`);
  out.push("@group(0) @binding(0) var<uniform> p: Params;");
  out.push("@group(0) @binding(1) var<storage, read> P: array<f32>;");
  out.push(...outputBindings(s, 2));
  out.push(convEpilogue(s));
  out.push(`@compute @workgroup_size(${REDUCE_WORKGROUP})`);
  out.push(
    "fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lidx: u32) {",
  );
  out.push(`  let i = ${LINEAR_WORKGROUP_ID} * ${REDUCE_WORKGROUP}u + lidx;`);
  out.push("  let blocks = p.Ho * p.blocksPerRow;");
  out.push("  if (i >= p.batch * p.cout * blocks) { return; }");
  out.push("  let bi = i / (p.cout * blocks);");
  out.push("  let co = (i / blocks) % p.cout;");
  out.push("  let oh = (i % blocks) / p.blocksPerRow;");
  out.push("  let ow0 = (i % p.blocksPerRow) * 4u;");
  out.push("  let live = min(p.Wo - ow0, 4u);");
  out.push("  let at = bi * p.cBatch + (co * p.Ho + oh) * p.Wo + ow0;");
  out.push("  var acc = vec4f(0.0);");
  out.push("  for (var slice = 0u; slice < p.slices; slice++) {");
  out.push("    let src = at + slice * p.sliceStride;");
  // One statement per live pixel, not acc[j] in a loop (matmul/epilogue.ts says why).
  out.push("    acc.x += P[src];");
  for (const j of [1, 2, 3]) out.push(`    if (live > ${j}u) { acc.${"xyzw"[j]} += P[src + ${j}u]; }`);
  out.push("  }");
  out.push("  finish4(bi, co, oh, ow0, true, 0u, acc);");
  out.push("}");
  return out.join("\n");
}

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

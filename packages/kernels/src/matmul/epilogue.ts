/**
 * The fused epilogue shared by the GEMM and convolution kernels, as one WGSL function
 * `finish4(<coordinates>, acc: vec4f)` that finishes and stores four consecutive outputs:
 *
 *   v = alpha · acc (+ the partial sum already stored, when a split reduction continues)
 *   on the last part of the reduction: v = activation(v + bias) + residual
 *
 * It reads the uniforms `p.accumulate`, `p.finalize` (and `p.alpha` when enabled), the output `C` and the
 * residual `R`.
 *
 * A gated epilogue (GEGLU, see wgsl.ts) instead gets two (value, gate) pairs and stores two outputs:
 * (alpha · value + bias) · gelu(alpha · gate + bias).
 */
import type { DType } from "@ldm/tensor";
import { ERF_WGSL } from "../elementwise/erf.ts";
import { type Activation, activationWgsl } from "./activation.ts";

export interface EpilogueSpec {
  out: DType;
  residual: DType | null;
  activation: Activation;
  /** Scale the accumulator by the uniform `p.alpha`. */
  alpha: boolean;
  /** The four outputs start 4-aligned and all exist: C and R are declared and accessed as vec4. */
  vec: boolean;
  /** acc is (value, gate, value, gate) of two outputs; no residual, activation or split reduction. */
  gated?: boolean;
  /** finish4's coordinate parameters, e.g. "bi: u32, m: u32, n: u32". */
  params: string;
  /**
   * Statements defining `at` and `rat` (element index in C and in R of the first output) and `live`
   * (how many of the four exist, 0–4; of the two when gated); they may return early.
   */
  locate: string;
  /** A vec4f expression of the bias for the four outputs, or null. */
  bias: string | null;
}

/**
 * The uniforms finish4 reads, by the convention of its callers' \`locate\` and \`bias\` expressions: the output's
 * batch stride, the element offsets of C, R and Bias, and whether this part of a split reduction continues or
 * finishes a sum.
 */
export const EPILOGUE_PARAMS = {
  cBatch: "u32",
  cOff: "u32",
  rOff: "u32",
  biasOff: "u32",
  accumulate: "u32",
  finalize: "u32",
} as const;

export function epilogueWgsl(e: EpilogueSpec): string {
  const lines = [e.gated ? ERF_WGSL.replaceAll("V", "vec2f") : activationWgsl(e.activation).replaceAll("V", "vec4f")];
  lines.push(`fn finish4(${e.params}, acc: vec4f) {`);
  lines.push(e.locate);
  lines.push("  if (live == 0u) { return; }");
  lines.push(e.alpha ? "  var v = p.alpha * acc;" : "  var v = acc;");
  if (e.gated) {
    // The GEMM never splits a gated product's reduction (C has no room for partial sums): finish at once.
    if (e.bias) lines.push(`  v += ${e.bias};`);
    lines.push("  let y = v.xz * gelu_erf(v.yw);");
    lines.push(`  ${perLive(2, (j, c) => `C[at + ${j}u] = ${e.out}(y.${c});`)}`);
    lines.push("}");
    return lines.join("\n");
  }
  lines.push(
    e.vec
      ? "  if (p.accumulate != 0u) { v += vec4f(C[at >> 2u]); }"
      : `  if (p.accumulate != 0u) { ${perLive(4, (j, c) => `v.${c} += f32(C[at + ${j}u]);`)} }`,
  );
  lines.push("  if (p.finalize != 0u) {");
  if (e.bias) lines.push(`    v += ${e.bias};`);
  lines.push("    v = activate(v);");
  if (e.residual) {
    lines.push(
      e.vec ? "    v += vec4f(R[rat >> 2u]);" : `    ${perLive(4, (j, c) => `v.${c} += f32(R[rat + ${j}u]);`)}`,
    );
  }
  lines.push("  }");
  lines.push(
    e.vec ? `  C[at >> 2u] = vec4<${e.out}>(v);` : `  ${perLive(4, (j, c) => `C[at + ${j}u] = ${e.out}(v.${c});`)}`,
  );
  lines.push("}");
  return lines.join("\n");
}

/**
 * One statement per live output, written out: `live` is known only at run time, and a loop that indexes a
 * vector with its counter (v[j]) made NVIDIA's compiler run the whole GEMM 7× slower (H200, Vulkan: a
 * 2048×2560×320 gated product took 1.55 ms against 0.22 ms written out).
 */
function perLive(count: number, statement: (j: number, component: string) => string): string {
  return Array.from({ length: count }, (_, j) => {
    const s = statement(j, "xyzw"[j]);
    return j === 0 ? s : `if (live > ${j}u) { ${s} }`;
  }).join(" ");
}

/**
 * Register accumulators `acc0 … acc{n-1}` (vec4f) and, after the main loop, their copy into the array
 * `acc` that the epilogue loop indexes. A private array indexed at run time stays in memory on llvmpipe,
 * so accumulating into it directly costs a load and a store per update (measured: 12–40% more CPU time
 * per GEMM or convolution than separate variables, which LLVM keeps in registers or spills only as needed).
 */
export function accumulatorsWgsl(count: number): { declare: string; collect: string; name: (i: number) => string } {
  const names = Array.from({ length: count }, (_, i) => `acc${i}`);
  return {
    declare: `  var ${names.join(": vec4f; var ")}: vec4f;`,
    collect: `  var acc = array<vec4f, ${count}>(${names.join(", ")});`,
    name: (i) => names[i],
  };
}

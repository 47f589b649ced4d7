/**
 * The epilogue writes out one statement per output instead of a loop that indexes a vector with its counter
 * (`v[j]`, j < live): NVIDIA's compiler ran a whole GEMM 7× slower for that loop. The values are checked on
 * ragged widths (live < 4) in matmul.test.ts; here, without a device, only the form.
 */
import { describe, expect, it } from "vitest";
import { epilogueWgsl } from "./epilogue.ts";

const RUNTIME_INDEXED = /\b[a-z]\[j\]/;

describe("epilogueWgsl without vector stores", () => {
  const locate = "  let live = 4u; let at = 0u; let rat = 0u;";
  it("stores, accumulates and adds the residual per live output", () => {
    const code = epilogueWgsl({
      ...{ out: "f32", residual: "f16", activation: "gelu", alpha: true, vec: false },
      ...{ params: "m: u32, n: u32", locate, bias: "vec4f(0.0)" },
    });
    expect(code).not.toMatch(RUNTIME_INDEXED);
    expect(code).toContain("if (live > 3u) { C[at + 3u] = f32(v.w); }");
    expect(code).toContain("if (live > 1u) { v.y += f32(R[rat + 1u]); }");
    expect(code).toContain("if (live > 2u) { v.z += f32(C[at + 2u]); }");
  });

  it("stores the two outputs of a gated product", () => {
    const code = epilogueWgsl({
      ...{ out: "f16", residual: null, activation: "none", alpha: true, vec: false, gated: true },
      ...{ params: "m: u32, n: u32", locate, bias: null },
    });
    expect(code).not.toMatch(RUNTIME_INDEXED);
    expect(code).toContain("C[at + 0u] = f16(y.x); if (live > 1u) { C[at + 1u] = f16(y.y); }");
  });
});

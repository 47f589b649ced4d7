/** The kernel runner's pure parts: the WGSL it writes around a body, the cache key, uniforms packed by name. */
import { describe, expect, it } from "vitest";
import { canonical, type KernelDecl, kernelKey, kernelWgsl, type ParamType, packParams } from "./kernel.ts";

interface Config {
  dtype: "f32" | "f16";
  scale: number;
}

const SCALE: KernelDecl<Config> = {
  name: "scale",
  params: { n: "u32", a: "f32" },
  bindings: ({ dtype }) => [
    { name: "x", type: dtype },
    { name: "out", type: `vec4<${dtype}>`, access: "read_write" },
  ],
  workgroupSize: 64,
  main: ({ scale }) => `
  out[item] = x[item] * p.a * ${scale};`,
};

describe("kernelWgsl", () => {
  it("writes the enables, Params (count first), bindings from 1, main's header and the guard", () => {
    const code = kernelWgsl(SCALE, { dtype: "f16", scale: 2 });
    expect(code.split("\n").slice(0, 8)).toEqual([
      "enable f16;",
      "struct Params { count: u32, n: u32, a: f32, }",
      "@group(0) @binding(0) var<uniform> p: Params;",
      "@group(0) @binding(1) var<storage, read> x: array<f16>;",
      "@group(0) @binding(2) var<storage, read_write> out: array<vec4<f16>>;",
      "",
      "@compute @workgroup_size(64)",
      "fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {",
    ]);
    expect(code).toContain("  let item = (wid.x + wid.y * nwg.x) * 64u + lid;\n  if (item >= p.count) { return; }\n");
    expect(code).toContain("out[item] = x[item] * p.a * 2;");
    expect(kernelWgsl(SCALE, { dtype: "f32", scale: 2 })).not.toContain("enable f16");
  });

  it("indexes workgroups or groups of invocations, and flags instead of returning when asked", () => {
    const perGroup = kernelWgsl({ ...SCALE, itemsPerWorkgroup: 1, enables: ["subgroups"] }, { dtype: "f32", scale: 1 });
    expect(perGroup).toContain("enable subgroups;");
    expect(perGroup).toContain("@builtin(subgroup_invocation_id) lane: u32");
    expect(perGroup).toContain("let item = (wid.x + wid.y * nwg.x);");
    const rows = kernelWgsl({ ...SCALE, itemsPerWorkgroup: 8, guard: "flag" }, { dtype: "f32", scale: 1 });
    expect(rows).toContain("let item = (wid.x + wid.y * nwg.x) * 8u + lid / 8u;\n  let inRange = item < p.count;");
    expect(() => kernelWgsl({ ...SCALE, itemsPerWorkgroup: 7 }, { dtype: "f32", scale: 1 })).toThrow(/7 items/);
  });
});

describe("kernelKey", () => {
  it("is the name and the configuration", () => {
    expect(kernelKey(SCALE, { dtype: "f32", scale: 2 })).toBe(kernelKey(SCALE, { dtype: "f32", scale: 2 }));
    expect(kernelKey(SCALE, { dtype: "f32", scale: 2 })).not.toBe(kernelKey(SCALE, { dtype: "f32", scale: 3 }));
    expect(kernelKey(SCALE, { dtype: "f32", scale: 2 })).not.toBe(kernelKey(SCALE, { dtype: "f16", scale: 2 }));
    expect(kernelKey(SCALE, { dtype: "f32", scale: 2 }).startsWith("scale:")).toBe(true);
    expect(canonical({ b: [1, { y: null, x: "s" }], a: true, u: undefined })).toBe('{a:true,b:[1,{x:"s",y:null}]}');
  });

  it("checks configurations (sorted keys) for anything but plain data", () => {
    expect(() => canonical({ f: () => 1 })).toThrow(/function/);
    expect(() => canonical({ n: Number.NaN })).toThrow(/NaN/);
  });
});

describe("packParams", () => {
  const fields: [string, ParamType][] = [
    ["count", "u32"],
    ["n", "u32"],
    ["a", "f32"],
  ];
  it("packs by name in struct order, padded to 16 bytes", () => {
    const bytes = packParams("scale", fields, { a: 0.5, count: 7, n: 3 });
    expect(bytes.byteLength).toBe(16);
    const view = new DataView(bytes.buffer);
    expect([view.getUint32(0, true), view.getUint32(4, true), view.getFloat32(8, true)]).toEqual([7, 3, 0.5]);
  });
  it("names a missing or unknown uniform", () => {
    expect(() => packParams("scale", fields, { count: 1, n: 3 })).toThrow("kernel scale: no value for the uniform 'a'");
    expect(() => packParams("scale", fields, { count: 1, n: 3, a: 1, b: 2 })).toThrow(/'b' is not one of/);
  });
});

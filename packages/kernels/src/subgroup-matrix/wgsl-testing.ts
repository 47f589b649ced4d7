/**
 * Checks shared by the subgroup-matrix WGSL tests. Tint parses a whole module before it checks the enables
 * against the device's features, so on an adapter without subgroup matrices (lavapipe) a module that parses
 * gets exactly one error, the missing extension, and a syntax error is reported in its place.
 */
import type { Device } from "@ldm/tensor";
import { expect } from "vitest";

/** The error messages Dawn's WGSL front end gives for a module on this device. */
async function compileErrors(d: Device, code: string): Promise<string[]> {
  d.gpuDevice.pushErrorScope("validation");
  const module = d.gpuDevice.createShaderModule({ code });
  await d.gpuDevice.popErrorScope();
  const info = await module.getCompilationInfo();
  return info.messages.filter((m) => m.type === "error").map((m) => `${m.lineNum}:${m.linePos} ${m.message}`);
}

const NOT_ALLOWED =
  /^\d+:\d+ extension 'chromium_experimental_subgroup_matrix' is not allowed in the current environment$/;

/** Only the missing feature is reported: the module parses. */
export async function expectParses(d: Device, code: string, label: string): Promise<void> {
  const errors = await compileErrors(d, code);
  expect(errors, label).toHaveLength(1);
  expect(errors[0]).toMatch(NOT_ALLOWED);
}

/** Errors other than the missing feature: the control that shows a syntax error would be caught. */
export async function expectSyntaxError(d: Device, code: string): Promise<void> {
  const errors = await compileErrors(d, code);
  expect(errors.length).toBeGreaterThan(0);
  expect(errors.join("\n")).not.toMatch(NOT_ALLOWED);
}

/** Bytes of the f16 and f32 workgroup arrays a module declares (what the planners budget). */
export function declaredWorkgroupBytes(code: string): number {
  return [...code.matchAll(/var<workgroup> \w+: array<(f16|f32), (\d+)>;/g)].reduce(
    (sum, m) => sum + Number(m[2]) * (m[1] === "f16" ? 2 : 4),
    0,
  );
}

/**
 * Checks shared by the subgroup-matrix WGSL tests. Tint parses a whole module before it checks the enables
 * against the device's features, so on an adapter without subgroup matrices (lavapipe) a module that parses
 * gets exactly one error, the missing extension, and a syntax error is reported in its place.
 */
import type { Device } from "@ldm/tensor";

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

/** Throws unless only the missing feature is reported: the module parses. */
export async function assertParses(d: Device, code: string, label: string): Promise<void> {
  const errors = await compileErrors(d, code);
  if (errors.length !== 1 || !NOT_ALLOWED.test(errors[0])) {
    throw new Error(`${label}: expected only the missing-extension error, got:\n${errors.join("\n")}`);
  }
}

/** Throws unless errors other than the missing feature are reported: the control for a planted syntax error. */
export async function assertSyntaxError(d: Device, code: string): Promise<void> {
  const errors = await compileErrors(d, code);
  if (errors.length === 0 || NOT_ALLOWED.test(errors.join("\n"))) {
    throw new Error(`expected a syntax error, got: ${errors.join("\n") || "none"}`);
  }
}

/** Bytes of the f16 and f32 workgroup arrays a module declares (what the planners budget). */
export function declaredWorkgroupBytes(code: string): number {
  return [...code.matchAll(/var<workgroup> \w+: array<(f16|f32), (\d+)>;/g)].reduce(
    (sum, m) => sum + Number(m[2]) * (m[1] === "f16" ? 2 : 4),
    0,
  );
}

/**
 * The paper's own models (CompVis/latent-diffusion), as tiny random-weight versions of their configs run by the
 * ORIGINAL upstream code (reference/make_ldm_family_dumps.py): every component and DDIM sampling with eta 0 and
 * eta 1 (global_seed) against those dumps, at validate's f32 tolerance (1e-4 of max|ref|).
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { type ValidationReport, validate } from "../src/validate/index.ts";

const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
const device = await useDevice();

function summary(report: ValidationReport): string {
  return report.checks
    .map((c) => `${c.key}: max abs ${c.maxAbs.toExponential(2)}, rel ${c.relative.toExponential(2)}`)
    .join("\n");
}

const OUTPUTS: Record<string, string[]> = {
  "tiny-celebahq": [
    "vae.encode.out.h",
    "vae.encode.out.quant",
    "vae.encode.out.indices",
    "vae.decode.out.x",
    "unet.out.eps",
  ],
  "tiny-churches": ["vae.encode.out.moments", "vae.decode.out.x", "unet.out.eps"],
  "tiny-cin": [
    "vae.encode.out.h",
    "vae.encode.out.quant",
    "vae.encode.out.indices",
    "vae.decode.out.x",
    "cond.out.c_crossattn",
    "unet.out.eps",
  ],
};

describe.each(Object.keys(OUTPUTS))("%s", (name) => {
  const run = (dump: string) =>
    validate({
      checkpoint: join(DUMPS, `${name}.safetensors`),
      config: join(DUMPS, `${name}.yaml`),
      dump: join(DUMPS, dump),
      device,
    });
  const expectPass = (report: ValidationReport) => {
    console.log(summary(report));
    for (const check of report.checks)
      expect(check.pass, `${check.key}: ${check.relative} ${check.problem ?? ""}`).toBe(true);
    expect(report.skipped).toEqual([]);
  };

  it("every component matches the original code in f32", async () => {
    const report = await run(`${name}.dump.safetensors`);
    expect(report.checks.map((c) => c.key).sort()).toEqual([...OUTPUTS[name]].sort());
    expectPass(report);
  });

  it.each(["ddim", "ddim-eta1"])("sampling (%s) reproduces upstream DDIMSampler's z_0 and image", async (which) => {
    const report = await run(`${name}.sample-${which}.safetensors`);
    expect(report.checks.map((c) => c.key).sort()).toEqual(["sample.out.image", "sample.out.z_0"]);
    expectPass(report);
  });
});

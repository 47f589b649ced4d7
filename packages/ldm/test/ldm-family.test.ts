/**
 * The paper's own models (CompVis/latent-diffusion), as tiny random-weight versions of their configs run by the
 * ORIGINAL upstream code (reference/make_ldm_family_dumps.py): every component and DDIM sampling with eta 0 and
 * eta 1 (global_seed) against those dumps, at validate's f32 tolerance (1e-4 of max|ref|).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { LatentDiffusion } from "../src/pipeline/latent-diffusion.ts";
import { type ValidationReport, validate } from "../src/validate/index.ts";
import { runCli } from "./helpers/run-cli.ts";

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
  "tiny-bsr": [
    "vae.encode.out.h",
    "vae.encode.out.quant",
    "vae.encode.out.indices",
    "vae.decode.out.x",
    "unet.out.eps",
  ],
  "tiny-seg": [
    "vae.encode.out.h",
    "vae.encode.out.quant",
    "vae.encode.out.indices",
    "vae.decode.out.x",
    "cond.out.c_concat",
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

it("tiny-bsr: upstream's tiled super-resolution (split_input_params, 9 crops a step, DDIM eta 1) gives the same z_0", async () => {
  const report = await validate({
    checkpoint: join(DUMPS, "tiny-bsr.safetensors"),
    config: join(DUMPS, "tiny-bsr.yaml"),
    dump: join(DUMPS, "tiny-bsr.sample-tiles.safetensors"),
    device,
  });
  console.log(summary(report));
  expect(report.checks.map((c) => [c.key, c.pass])).toEqual([["sample.out.z_0", true]]);
});

describe("LatentDiffusion from the library and the CLI", () => {
  const load = (name: string) =>
    LatentDiffusion.load(join(DUMPS, `${name}.safetensors`), { device, config: join(DUMPS, `${name}.yaml`) });

  it("samples an unconditional VQ model with its EMA weights, and a class; bad inputs get one-line errors", async () => {
    const faces = await load("tiny-celebahq");
    const result = await faces.generate({ steps: 3, seed: 1, batchSize: 2 });
    expect(result.images).toHaveLength(2);
    expect([result.images[0].width, result.images[0].height]).toEqual([32, 32]);
    await expect(faces.generate({ prompt: "a face", steps: 2 })).rejects.toThrow(/unconditional: it takes no prompt/);
    await expect(faces.generate({ steps: 2, guidanceScale: 3 })).rejects.toThrow(/use guidance scale 1/);
    const cin = await load("tiny-cin");
    const classes = await cin.generate({ classLabel: 5, guidanceScale: 3, steps: 3, seed: 1 });
    expect(classes.images).toHaveLength(1);
    await expect(cin.generate({ classLabel: 11, steps: 2 })).rejects.toThrow(/class 11 is out of range: .* 0 to 10/);
    await expect(cin.generate({ steps: 2 })).rejects.toThrow(/give a class/);
  });

  it("ldm generate runs them (--class for class models); ldm info names first stage, cond stage and conditioning key", async () => {
    const out = mkdtempSync(join(tmpdir(), "ldm-family-"));
    try {
      const model = join(DUMPS, "tiny-cin.safetensors");
      const ok = await runCli(
        "generate",
        "--model",
        model,
        "--class",
        "3",
        "--cfg",
        "3",
        "--steps",
        "2",
        "--out",
        join(out, "c.png"),
      );
      expect(ok.code, ok.err).toBe(0);
      const bad = await runCli(
        "generate",
        "--model",
        model,
        "--class",
        "12",
        "--steps",
        "2",
        "--out",
        join(out, "d.png"),
      );
      expect(bad.code).toBe(1);
      expect(bad.err).toMatch(/class 12 is out of range/);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

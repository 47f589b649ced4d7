/**
 * First stages saved alone (models/first_stage_models/*: VQModel and AutoencoderKL at the top of their YAML, keys
 * without a prefix, their training loss's tensors beside them): tiny-vq-f4 and tiny-kl-f8 from the ORIGINAL
 * modules (reference/make_ldm_family_extra_dumps.py) through ldm info and validate.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { useDevice } from "@ldm/tensor/testing";
import { ldmConfigFromYaml } from "@ldm/weights";
import { describe, expect, it } from "vitest";
import { validate } from "../src/validate/index.ts";
import { DUMPS } from "./helpers/dump-pipelines.ts";
import { runCli } from "./helpers/run-cli.ts";

const device = await useDevice();
const file = (name: string) => join(DUMPS, name);

describe.each([
  ["tiny-vq-f4", "VQModel (64 codes of 3)", ["vae.encode.out.h", "vae.encode.out.quant", "vae.encode.out.indices"]],
  ["tiny-kl-f8", "AutoencoderKL", ["vae.encode.out.moments"]],
])("%s", (name, firstStage, encodeOutputs) => {
  it("passes validate on vae.encode and vae.decode against the original module in f32", async () => {
    const report = await validate({
      checkpoint: file(`${name}.safetensors`),
      config: file(`${name}.yaml`),
      dump: file(`${name}.dump.safetensors`),
      device,
    });
    for (const c of report.checks) console.log(`${c.key}: rel ${c.relative.toExponential(2)}`);
    expect(report.checks.map((c) => c.key).sort()).toEqual([...encodeOutputs, "vae.decode.out.x"].sort());
    for (const c of report.checks) expect(c.pass, `${c.key}: ${c.relative}`).toBe(true);
  });

  it("ldm info names it and counts its stored parameters; its loss tensors are ignored", async () => {
    const { code, out, err } = await runCli("info", file(`${name}.safetensors`), "--json");
    expect(code, err).toBe(0);
    const report = JSON.parse(out);
    expect(report.family).toBe("first stage alone");
    expect(report.firstStage).toBe(firstStage);
    expect(report.components.map((c: { name: string }) => c.name)).toEqual(["VAE"]);
    expect(report.ignored).toEqual([{ reason: "the first stage's training loss (LPIPS, discriminator)", count: 1 }]);
  });
});

describe("a first stage alone is not a LatentDiffusion", () => {
  it("its YAML is refused as a model to sample, naming what reads it", () => {
    const path = file("tiny-vq-f4.yaml");
    expect(() => ldmConfigFromYaml(readFileSync(path, "utf8"), path)).toThrow(
      /model\.target VQModel is a first stage alone, not a LatentDiffusion/,
    );
  });

  it("validate refuses a dump with components it does not have; ldm generate says what it is", async () => {
    await expect(
      validate({
        checkpoint: file("tiny-vq-f4.safetensors"),
        config: file("tiny-vq-f4.yaml"),
        dump: file("tiny-celebahq.dump.safetensors"),
        device,
      }),
    ).rejects.toThrow(
      /a first stage alone \(VQModel\) is checked on vae\.encode and vae\.decode; the dump's unet need/,
    );
    const { code, err } = await runCli("generate", "--model", file("tiny-vq-f4.safetensors"), "--steps", "1");
    expect(code).toBe(1);
    expect(err).toMatch(/ldm: .*first stage alone, not a LatentDiffusion/);
  });
});

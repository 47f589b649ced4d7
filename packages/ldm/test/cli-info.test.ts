import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { tinyConfig, writeDiffusers, writeSingleFile } from "@ldm/weights/testing";
import { Command } from "commander";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { registerInfo } from "../src/cli/commands/info.ts";
import { UserError } from "../src/cli/errors.ts";

const dir = mkdtempSync(join(tmpdir(), "ldm-info-"));
beforeAll(async () => {
  await writeSingleFile(join(dir, "tiny.safetensors"), tinyConfig(), { schedule: true, ema: true });
  await writeSingleFile(join(dir, "sd2.safetensors"), tinyConfig(), { text: "openclip", dtype: "BF16" });
  await writeDiffusers(join(dir, "tiny-diffusers"), tinyConfig(), { variant: "fp16", prediction: "v_prediction" });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs `ldm info …` in-process; returns what it printed, or throws what it threw. */
async function info(...args: string[]): Promise<string> {
  const program = new Command("ldm").exitOverride();
  registerInfo(program);
  const lines: string[] = [];
  const log = vi.spyOn(console, "log").mockImplementation((...a) => void lines.push(a.join(" ")));
  try {
    await program.parseAsync(["node", "ldm", "info", ...args]);
  } finally {
    log.mockRestore();
  }
  return lines.join("\n");
}

async function userError(...args: string[]): Promise<string> {
  const e = await info(...args).then(
    () => undefined,
    (err: Error) => err,
  );
  expect(e).toBeInstanceOf(UserError);
  return (e as Error).message;
}

describe("ldm info", () => {
  it("prints the family, parameters and dtypes per component, the config and what was assumed", async () => {
    const out = await info(join(dir, "tiny.safetensors"));
    expect(out).toMatch(/single file/);
    expect(out).toMatch(/family: SD 1\.x\n/);
    expect(out).toMatch(/UNet +\d[\d,]* parameters in \d+ tensors \(F16 × \d+\)/);
    expect(out).toMatch(/text encoder +[\d,]+ parameters/);
    expect(out).toMatch(/EMA weights: present, not used/);
    expect(out).toMatch(/schedule buffers: alphas_cumprod, betas|schedule buffers: betas, alphas_cumprod/);
    expect(out).toMatch(/channel_mult: \[ 1, 2, 2, 2 \]/);
    expect(out).toMatch(/assumed:\n {2}UNet num_heads 8/);
  });

  it("SD 2.x single file (OpenCLIP text encoder, BF16)", async () => {
    const out = await info(join(dir, "sd2.safetensors"));
    expect(out).toMatch(/family: SD 2\.x/);
    expect(out).toMatch(/BF16/);
    expect(out).toMatch(/layer: penultimate/);
  });

  it("a diffusers folder, as JSON", async () => {
    const report = JSON.parse(await info(join(dir, "tiny-diffusers"), "--json"));
    expect(report.layout).toBe("diffusers");
    expect(report.config.parameterization).toBe("v");
    expect(report.components.map((c: { name: string }) => c.name)).toEqual(["UNet", "VAE", "text encoder"]);
    expect(report.components[0].dtypes).toEqual({ F16: report.components[0].tensors });
  });

  it("uses a YAML config when given", async () => {
    const yaml = join(dir, "custom.yaml");
    writeFileSync(
      yaml,
      `model:
  params:
    parameterization: v
    unet_config: {params: {in_channels: 4, out_channels: 4, model_channels: 8, num_res_blocks: 2, attention_resolutions: [1, 2, 4], channel_mult: [1, 2, 2, 2], num_heads: 2, use_spatial_transformer: true, context_dim: 128}}
    first_stage_config: {params: {embed_dim: 4, ddconfig: {z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: 8, ch_mult: [1, 1, 2, 2], num_res_blocks: 2, attn_resolutions: []}}}
    cond_stage_config: {target: ldm.modules.encoders.modules.FrozenCLIPEmbedder}
`,
    );
    const out = await info(join(dir, "tiny.safetensors"), "--config", yaml);
    expect(out).toMatch(/config \(.*custom\.yaml\)/);
    expect(out).toMatch(/parameterization: v/);
    expect(out).not.toMatch(/assumed/);
  });

  it("reads <stem>.yaml beside a single file, as generate and validate do", async () => {
    const yaml = join(dir, "beside.yaml");
    const text = `model:
  params:
    parameterization: v
    unet_config: {params: {in_channels: 4, out_channels: 4, model_channels: 8, num_res_blocks: 2, attention_resolutions: [1, 2, 4], channel_mult: [1, 2, 2, 2], num_heads: 2, use_spatial_transformer: true, context_dim: 128}}
    first_stage_config: {params: {embed_dim: 4, ddconfig: {z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: 8, ch_mult: [1, 1, 2, 2], num_res_blocks: 2, attn_resolutions: []}}}
    cond_stage_config: {target: ldm.modules.encoders.modules.FrozenCLIPEmbedder}
`;
    writeFileSync(yaml, text);
    await writeSingleFile(join(dir, "beside.safetensors"), tinyConfig(), {});
    const out = await info(join(dir, "beside.safetensors"));
    expect(out).toMatch(/config \(.*beside\.yaml\)/);
    expect(out).toMatch(/parameterization: v/);
  });

  it("one-line user errors: missing file, not safetensors, malformed header, bad config", async () => {
    expect(await userError(join(dir, "absent.safetensors"))).toMatch(/absent\.safetensors: no such file or folder/);
    const text = join(dir, "notes.safetensors");
    writeFileSync(text, "hello, this is not a checkpoint at all");
    expect(await userError(text)).toMatch(
      /notes\.safetensors: not a safetensors file, or a corrupt one: header length \d+ bytes exceeds/,
    );
    const malformed = join(dir, "malformed.safetensors");
    const header = Buffer.from('{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}');
    const bytes = Buffer.alloc(8 + header.length + 8);
    bytes.writeBigUInt64LE(BigInt(header.length));
    header.copy(bytes, 8);
    writeFileSync(malformed, bytes);
    expect(await userError(malformed)).toMatch(
      /malformed\.safetensors: tensor "w": F32 \[4\] needs 16 bytes but data_offsets \[0, 8\] hold 8/,
    );
    const badYaml = join(dir, "bad.yaml");
    writeFileSync(badYaml, "model: {params: {}}");
    expect(await userError(join(dir, "tiny.safetensors"), "--config", badYaml)).toMatch(
      /bad\.yaml: missing model\.params\.unet_config/,
    );
    expect(await userError(join(dir, "tiny.safetensors"), "--config", join(dir, "none.yaml"))).toMatch(
      /cannot read the config file/,
    );
  });

  it("counts every stored parameter of the original cond stage, BERTEmbedder's unused to_logits too", async () => {
    // tiny-text2img256 was written from the original BERTEmbedder's state_dict (reference/make_text_dumps.py):
    // 32 tensors, 553,458 parameters, 274,698 of them in to_logits (30522 × 8 + 30522).
    const checkpoint = fileURLToPath(new URL("./fixtures/dumps/tiny-text2img256.safetensors", import.meta.url));
    const out = await info(checkpoint);
    expect(out).toMatch(
      /cond stage +553,458 parameters in 32 tensors \(F16 × 32; 274,698 of them in 2 stored, unused\)/,
    );
    const cond = JSON.parse(await info(checkpoint, "--json")).components.find(
      (c: { name: string }) => c.name === "cond stage",
    );
    expect([cond.parameters, cond.unused]).toEqual([553_458, { tensors: 2, parameters: 274_698 }]);
  });

  it("a partial checkpoint: prints what is there and why the model is not detected", async () => {
    const { writeSafetensors } = await import("@ldm/weights/node");
    const path = join(dir, "vae.safetensors");
    await writeSafetensors(path, {
      "first_stage_model.encoder.conv_in.bias": { dtype: "F32", shape: [8], data: new Float32Array(8) },
    });
    const out = await info(path);
    expect(out).toMatch(/model: not detected: .*not a complete Stable Diffusion checkpoint/);
    expect(out).toMatch(/VAE +8 parameters in 1 tensors \(F32 × 1\)/);
  });
});

import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type ParamDType, Tensor } from "@ldm/tensor";
import { beforeAll, describe, expect, it } from "vitest";
import {
  MappedWeightSource,
  modelParamShapes,
  TEXT_PREFIX,
  type TensorToWrite,
  UNET_PREFIX,
  VAE_PREFIX,
} from "../src/index.ts";
import { type Checkpoint, openCheckpoint, openSafetensors, writeSafetensors } from "../src/node.ts";
import {
  canonicalTensors,
  checkpointTestEnvironment,
  scheduleBuffers,
  tinyConfig,
  valuesFor,
  writeDiffusers,
  writeSingleFile,
} from "./synthetic.ts";
import { writeTorchCheckpoint } from "./torch-writer.ts";

const { dir, device } = checkpointTestEnvironment("ldm-checkpoint-");

const config = tinyConfig();
const canonical = modelParamShapes(config);

/** Loads every canonical key the source has into fresh tensors and returns them by key. */
async function loadAll(source: MappedWeightSource, dtype: ParamDType, keys = [...source.keys()]) {
  const tensors = new Map(keys.map((k) => [k, Tensor.empty(device(), source.describe(k)!.shape, dtype)]));
  await source.load([...tensors].map(([key, tensor]) => ({ key, tensor })));
  return tensors;
}

/** Checks each loaded tensor against the values the synthetic file was made from (plus `offset`). */
async function expectCanonicalValues(tensors: Map<string, Tensor>, offset = (_key: string) => 0) {
  for (const [key, t] of tensors) {
    const expected = valuesFor(key, t.size).map((v) => v + offset(key));
    expect(await t.toFloat32(), key).toEqual(expected);
    t.dispose();
  }
}

/** Every 25th key, plus the odd-sized ones (the UNet's 3-channel VAE convolutions, biases of 3). */
function sample(source: MappedWeightSource): string[] {
  const keys = [...source.keys()].sort();
  const odd = (k: string) => source.describe(k)!.shape.reduce((a, b) => a * b, 1) % 2 === 1;
  return keys.filter((k, i) => i % 25 === 0 || odd(k));
}

function keysUnder(source: { keys(): Iterable<string> }, prefix: string) {
  return [...source.keys()].filter((k) => k.startsWith(prefix)).sort();
}

async function withCheckpoint(path: string, fn: (c: Checkpoint) => Promise<void>, options = {}) {
  const c = await openCheckpoint(path, options);
  try {
    await fn(c);
  } finally {
    await c.close();
  }
}

describe("single file, SD 1.x naming", () => {
  const path = join(dir, "sd1.safetensors");
  beforeAll(() => writeSingleFile(path, config, { schedule: true, ema: true }));

  it("presents exactly the canonical keys, with their shapes and stored dtype", () =>
    withCheckpoint(path, async (c) => {
      expect(c.layout).toBe("single-file");
      expect([...c.source.keys()].sort()).toEqual([...canonical.keys()].sort());
      for (const [key, shape] of canonical) expect(c.source.describe(key), key).toEqual({ shape, dtype: "F16" });
      expect(c.textNaming).toBe("hf");
      expect(c.hasEma).toBe(true);
      expect(c.ignored.map((i) => i.key)).toContain(`${TEXT_PREFIX}embeddings.position_ids`);
    }));

  it("detects every size of the model from shapes alone", () =>
    withCheckpoint(path, async (c) => {
      const { config: detected, assumptions } = c.config();
      expect(detected).toEqual(config);
      expect(assumptions.join("; ")).toMatch(/num_heads 8.*parameterization "eps"/);
    }));

  it("streams f16 into f32 and f16 tensors exactly", () =>
    withCheckpoint(path, async (c) => {
      await expectCanonicalValues(await loadAll(c.source, "f32"));
      if (device().features.shaderF16) await expectCanonicalValues(await loadAll(c.source, "f16", sample(c.source)));
    }));

  it("streams in chunks far smaller than a tensor, odd element counts included", () =>
    withCheckpoint(
      path,
      async (c) => {
        const keys = sample(c.source);
        expect(keys.some((k) => c.source.describe(k)!.shape.reduce((a, b) => a * b, 1) % 2 === 1)).toBe(true);
        await expectCanonicalValues(await loadAll(c.source, "f32", keys));
        if (device().features.shaderF16) await expectCanonicalValues(await loadAll(c.source, "f16", keys));
      },
      { chunkBytes: 64, syncBytes: 4096 },
    ));

  it("takes the UNet from the EMA copy when asked", () =>
    withCheckpoint(
      path,
      async (c) => {
        expect(c.source.mapping(`${UNET_PREFIX}out.2.weight`)?.stored).toBe("model_ema.diffusion_modelout2weight");
        const keys = [`${UNET_PREFIX}input_blocks.1.1.proj_in.weight`, `${VAE_PREFIX}encoder.conv_in.bias`];
        await expectCanonicalValues(await loadAll(c.source, "f32", keys), (k) => (k.startsWith(UNET_PREFIX) ? 1 : 0));
        expect(c.ignored.map((i) => i.key)).toEqual(
          expect.arrayContaining(["model_ema.decay", "model_ema.num_updates"]),
        );
      },
      { ema: true },
    ));

  it("reads the same file as a Lightning .ckpt: same keys, EMA when asked, schedule buffers", async () => {
    const ckpt = join(dir, "sd1.ckpt");
    const file = await openSafetensors(path);
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, e] of file.tensors) tensors[name] = { ...e, data: await file.readBytes(name) };
    await file.close();
    await writeTorchCheckpoint(ckpt, { tensors, wrap: "state_dict", scalars: { global_step: 7 } });
    await withCheckpoint(
      ckpt,
      async (c) => {
        expect([...c.source.keys()].sort()).toEqual([...canonical.keys()].sort());
        expect(c.hasEma).toBe(true);
        expect(c.source.mapping(`${UNET_PREFIX}out.2.weight`)?.stored).toBe("model_ema.diffusion_modelout2weight");
        const keys = [`${UNET_PREFIX}input_blocks.1.1.proj_in.weight`, `${VAE_PREFIX}encoder.conv_in.bias`];
        await expectCanonicalValues(await loadAll(c.source, "f32", keys), (k) => (k.startsWith(UNET_PREFIX) ? 1 : 0));
        expect((await c.readSchedule()).betas).toEqual(Float64Array.from(scheduleBuffers(config).betas));
        expect(c.files[0].metadata).toMatchObject({ state_dict: "state_dict", global_step: "7" });
      },
      { ema: true },
    );
  });

  it("exposes the schedule buffers as float64", () =>
    withCheckpoint(path, async (c) => {
      expect([...c.scheduleKeys].sort()).toEqual(["alphas_cumprod", "betas"]);
      const schedule = await c.readSchedule();
      const expected = scheduleBuffers(config);
      expect(schedule.betas).toEqual(Float64Array.from(expected.betas));
      expect(schedule.alphas_cumprod.length).toBe(1000);
      expect(c.config().config.timesteps).toBe(1000);
    }));
});

describe("single file, other namings and dtypes", () => {
  it("maps the older cond_stage_model.transformer.* (no text_model) onto the canonical names; BF16 → f32", async () => {
    const path = join(dir, "legacy.safetensors");
    await writeSingleFile(path, config, { text: "hf-legacy", dtype: "BF16" });
    await withCheckpoint(path, async (c) => {
      expect(c.textNaming).toBe("hf-legacy");
      expect(keysUnder(c.source, TEXT_PREFIX)).toEqual(keysUnder(canonical, TEXT_PREFIX));
      const keys = keysUnder(c.source, TEXT_PREFIX).slice(0, 6);
      await expectCanonicalValues(await loadAll(c.source, "f32", keys));
    });
  });

  it("SD 2.x: splits OpenCLIP's fused in_proj into q/k/v by rows; detects SD 2.x and the penultimate layer", async () => {
    const sd2 = tinyConfig({
      family: "sd2",
      unet: { ...config.unet, num_heads: -1, num_head_channels: 4, use_linear_in_transformer: true },
      text: { ...config.text, hidden_act: "gelu", layer: "penultimate", pad_token_id: 0 },
    });
    const path = join(dir, "sd2.safetensors");
    await writeSingleFile(path, sd2, { text: "openclip", dtype: "F32" });
    await withCheckpoint(
      path,
      async (c) => {
        expect(c.textNaming).toBe("openclip");
        expect([...c.source.keys()].sort()).toEqual([...modelParamShapes(sd2).keys()].sort());
        const q = c.source.mapping(`${TEXT_PREFIX}encoder.layers.1.self_attn.v_proj.weight`)!;
        expect(q.stored).toBe("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight");
        expect(q.transform).toEqual({ kind: "rows", start: 256, end: 384 });
        expect(c.ignored.map((i) => i.key).sort()).toEqual([
          "cond_stage_model.model.logit_scale",
          "cond_stage_model.model.text_projection",
        ]);
        await expectCanonicalValues(await loadAll(c.source, "f32", keysUnder(c.source, TEXT_PREFIX)));
        // Heads are not in the weights: SD 2.x's 64-channel heads are assumed, and said so.
        const { config: detected, assumptions } = c.config();
        expect(detected).toEqual({
          ...sd2,
          unet: { ...sd2.unet, num_head_channels: 64 },
          vae: { ...sd2.vae, ddconfig: { ...sd2.vae.ddconfig, resolution: 256 } },
        });
        expect(assumptions).toContain("UNet num_head_channels 64 (SD 2.x)");
      },
      { chunkBytes: 64 },
    );
  });

  it("detects inpainting UNets (9 input channels)", async () => {
    const inpaint = tinyConfig({ inpainting: true, unet: { ...config.unet, in_channels: 9 } });
    const path = join(dir, "inpaint.safetensors");
    await writeSingleFile(path, inpaint);
    await withCheckpoint(path, async (c) => {
      expect(c.config().config).toEqual(inpaint);
    });
  });

  it("refuses EMA when the file has none, and a .ckpt that is no PyTorch checkpoint, naming the file", async () => {
    const path = join(dir, "plain.safetensors");
    await writeSingleFile(path, config);
    await expect(openCheckpoint(path, { ema: true })).rejects.toThrow(
      /plain\.safetensors: no EMA weights for \d+ of \d+ UNet parameters/,
    );
    const pickle = join(dir, "model.ckpt");
    writeFileSync(pickle, "PK");
    await expect(openCheckpoint(pickle)).rejects.toThrow(/model\.ckpt: not a zip archive/);
    await expect(openCheckpoint(join(dir, "absent.safetensors"))).rejects.toThrow(
      /absent\.safetensors: no such file or folder/,
    );
  });

  it("says which components a partial checkpoint lacks", async () => {
    const path = join(dir, "vae-only.safetensors");
    const vae = canonicalTensors(config).filter(([k]) => k.startsWith(VAE_PREFIX));
    await writeSafetensors(path, Object.fromEntries(vae.map(([k, shape, v]) => [k, { dtype: "F32", shape, data: v }])));
    await withCheckpoint(path, async (c) => {
      expect(() => c.config()).toThrow(
        /vae-only\.safetensors: not a complete Stable Diffusion checkpoint: no UNet \(model\.diffusion_model\.input_blocks\.0\.0\.weight\), no text encoder/,
      );
    });
  });
});

describe("load requests are checked all at once", () => {
  it("lists missing keys, size mismatches and non-float data in one error, before reading anything", async () => {
    const path = join(dir, "checks.safetensors");
    await writeSingleFile(path, config);
    await withCheckpoint(path, async (c) => {
      const conv = `${UNET_PREFIX}input_blocks.0.0.weight`;
      const requests = [
        { key: "model.diffusion_model.nope.weight", tensor: Tensor.empty(device(), [2]) },
        { key: conv, tensor: Tensor.empty(device(), [8, 4, 3, 2]) },
        { key: `${UNET_PREFIX}out.2.bias`, tensor: Tensor.empty(device(), [4], "i32") },
      ];
      const error = await c.source.load(requests).catch((e: Error) => e);
      expect(error).toBeInstanceOf(Error);
      expect((error as Error).message).toMatch(/cannot load 3 tensor\(s\) from .*checks\.safetensors/);
      expect((error as Error).message).toMatch(/model\.diffusion_model\.nope\.weight: not in the checkpoint/);
      expect((error as Error).message).toMatch(
        /input_blocks\.0\.0\.weight: the tensor is \[8, 4, 3, 2\], the checkpoint holds \[8, 4, 3, 3\]/,
      );
      expect((error as Error).message).toMatch(/out\.2\.bias: cannot load into a i32 tensor/);
      for (const r of requests) r.tensor.dispose();
    });
  });

  it("reports integer data under a parameter key", async () => {
    const path = join(dir, "int.safetensors");
    await writeSafetensors(path, { w: { dtype: "I32", shape: [3], data: Int32Array.of(1, 2, 3) } });
    const file = await openSafetensors(path);
    const source = new MappedWeightSource(
      path,
      new Map([["w", { file, stored: "w", shape: [3], transform: { kind: "none" } }]]),
    );
    const t = Tensor.empty(device(), [3]);
    await expect(source.load([{ key: "w", tensor: t }])).rejects.toThrow(/w: stored as I32, not a floating-point type/);
    t.dispose();
    await file.close();
  });
});

describe("diffusers folder", () => {
  const folder = join(dir, "diffusers");
  const trainedAt = { ...config, image_size: 12 };
  beforeAll(() => writeDiffusers(folder, trainedAt, { variant: "fp16", prediction: "v_prediction" }));

  it("maps UNet, VAE and text encoder names onto the canonical keys and shapes", () =>
    withCheckpoint(folder, async (c) => {
      expect(c.layout).toBe("diffusers");
      expect(c.ignored.map((i) => i.key)).toEqual(["text_model.embeddings.position_ids"]);
      expect([...c.source.keys()].sort()).toEqual([...canonical.keys()].sort());
      for (const [key, shape] of canonical) expect(c.source.describe(key)?.shape, key).toEqual(shape);
      // The VAE's linear attention weights are reported in the original 1×1-convolution shape.
      const q = c.source.mapping(`${VAE_PREFIX}decoder.mid.attn_1.q.weight`)!;
      expect(q).toMatchObject({
        stored: "decoder.mid_block.attentions.0.query.weight",
        transform: { kind: "reshape" },
      });
      expect(q.file.entry(q.stored).shape).toEqual([16, 16]);
    }));

  it("loads every tensor to its canonical values", () =>
    withCheckpoint(folder, async (c) => {
      await expectCanonicalValues(await loadAll(c.source, "f32"));
    }));

  it("reads the configs: v-prediction from the scheduler, heads and sample size from the UNet, the tokenizer's pad token", () =>
    withCheckpoint(folder, async (c) => {
      const { config: detected, assumptions } = c.config();
      expect(detected).toEqual({ ...trainedAt, parameterization: "v", text: { ...config.text, pad_token_id: 49 } });
      expect(assumptions).toEqual([]);
      expect(c.schedulerConfig?.prediction_type).toBe("v_prediction");
      expect(c.tokenizer).toEqual({
        vocab: join(folder, "tokenizer", "vocab.json"),
        merges: join(folder, "tokenizer", "merges.txt"),
      });
      expect(c.modelIndex?._class_name).toBe("StableDiffusionPipeline");
    }));

  it("accepts the newer VAE attention names and plain (non-variant) files", async () => {
    const plain = join(dir, "diffusers-plain");
    await writeDiffusers(plain, config, { newVaeAttentionNames: true });
    await withCheckpoint(plain, async (c) => {
      expect(c.source.mapping(`${VAE_PREFIX}encoder.mid.attn_1.proj_out.weight`)?.stored).toBe(
        "encoder.mid_block.attentions.0.to_out.0.weight",
      );
      expect(c.source.describe(`${VAE_PREFIX}encoder.mid.attn_1.proj_out.weight`)).toEqual({
        shape: [16, 16, 1, 1],
        dtype: "F32",
      });
      expect([...c.source.keys()].sort()).toEqual([...canonical.keys()].sort());
    });
    await expect(openCheckpoint(plain, { variant: "fp16" })).rejects.toThrow(
      /unet: no .*diffusion_pytorch_model\.fp16\.safetensors/,
    );
  });

  it("reads a component sharded over several files through its .safetensors.index.json", async () => {
    const sharded = join(dir, "diffusers-sharded");
    await writeDiffusers(sharded, config);
    const whole = join(sharded, "unet", "diffusion_pytorch_model.safetensors");
    const file = await openSafetensors(whole);
    const names = [...file.tensors.keys()];
    const weightMap: Record<string, string> = {};
    for (const [shard, part] of [names.slice(0, 100), names.slice(100)].entries()) {
      const shardName = `diffusion_pytorch_model-0000${shard + 1}-of-00002.safetensors`;
      const tensors: Record<string, TensorToWrite> = {};
      for (const name of part) {
        const e = file.entry(name);
        tensors[name] = { dtype: e.dtype, shape: e.shape, data: await file.readBytes(name) };
        weightMap[name] = shardName;
      }
      await writeSafetensors(join(sharded, "unet", shardName), tensors);
    }
    await file.close();
    rmSync(whole);
    writeFileSync(`${whole}.index.json`, JSON.stringify({ metadata: {}, weight_map: weightMap }));
    await withCheckpoint(sharded, async (c) => {
      expect(c.files.length).toBe(4);
      expect([...c.source.keys()].sort()).toEqual([...canonical.keys()].sort());
      const keys = keysUnder(c.source, UNET_PREFIX).filter((_, i) => i % 40 === 0);
      expect(new Set(keys.map((k) => c.source.mapping(k)!.file.name)).size).toBe(2);
      await expectCanonicalValues(await loadAll(c.source, "f32", keys));
    });
  });

  it("reads PyTorch .bin components as data (unet/diffusion_pytorch_model.bin, text_encoder/pytorch_model.bin)", async () => {
    const folder = join(dir, "diffusers-bin");
    await writeDiffusers(folder, config);
    for (const [component, base, bin] of [
      ["unet", "diffusion_pytorch_model", "diffusion_pytorch_model"],
      ["text_encoder", "model", "pytorch_model"],
    ]) {
      const path = join(folder, component, `${base}.safetensors`);
      const file = await openSafetensors(path);
      const tensors: Record<string, TensorToWrite> = {};
      for (const [name, e] of file.tensors) tensors[name] = { ...e, data: await file.readBytes(name) };
      await file.close();
      await writeTorchCheckpoint(join(folder, component, `${bin}.bin`), { tensors });
      rmSync(path);
    }
    await withCheckpoint(folder, async (c) => {
      expect(c.files.map((f) => f.name.split("/").slice(-2).join("/")).sort()).toEqual([
        "text_encoder/pytorch_model.bin",
        "unet/diffusion_pytorch_model.bin",
        "vae/diffusion_pytorch_model.safetensors",
      ]);
      expect([...c.source.keys()].sort()).toEqual([...canonical.keys()].sort());
      await expectCanonicalValues(
        await loadAll(
          c.source,
          "f32",
          [...c.source.keys()].filter((_, i) => i % 7 === 0),
        ),
      );
    });
  });

  it("names what is missing: model_index.json, weights", async () => {
    const broken = join(dir, "diffusers-broken");
    await writeDiffusers(broken, config);
    rmSync(join(broken, "unet", "diffusion_pytorch_model.safetensors"));
    await expect(openCheckpoint(broken)).rejects.toThrow(
      /unet: no .*unet\/diffusion_pytorch_model\.safetensors \(nor an fp16 variant\), nor a PyTorch \.bin/,
    );
    rmSync(join(broken, "model_index.json"));
    await expect(openCheckpoint(broken)).rejects.toThrow(/model_index\.json: missing/);
  });
});

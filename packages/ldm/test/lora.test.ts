import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { f32ArrayToF16, Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { decodeFloats, isFloatStoredDType, type LdmConfig, TEXT_PREFIX } from "@ldm/weights";
import { openSafetensors } from "@ldm/weights/node";
import { describe, expect, it } from "vitest";
import { loadLora } from "../src/lora/files.ts";
import { type Lora, type LoraUse, MergedLoras } from "../src/lora/merge.ts";
import { loraTags, loraTagText, untaggedLoras, withoutLoraTags } from "../src/lora/prompt.ts";
import { type LoadedModel, loadModel } from "../src/models/index.ts";
import { StableDiffusion } from "../src/pipeline/stable-diffusion.ts";
import { Dump } from "../src/validate/dump.ts";
import { maxRelativeError } from "./helpers/compare.ts";
import { writeTinyVocab } from "./helpers/tiny-vocab.ts";

const device = await useDevice();
const dumps = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
const loras = fileURLToPath(new URL("./fixtures/lora/", import.meta.url));

/** reference/lora/make_lora_fixtures.py: the merged weights (f32) and the strengths it merged with. */
async function expected(model: string) {
  const file = await openSafetensors(`${loras}${model}.expected.safetensors`);
  try {
    const merged = new Map<string, Float32Array>();
    for (const [key, entry] of file.tensors) {
      if (!key.startsWith("merged.") || !isFloatStoredDType(entry.dtype)) continue;
      merged.set(
        key.slice("merged.".length),
        Float32Array.from(decodeFloats(entry.dtype, await file.readBytes(key), entry.size)),
      );
    }
    const strengths = JSON.parse(file.metadata.strengths) as Record<"kohya" | "peft", { text: number; unet: number }>;
    return { merged, strengths };
  } finally {
    await file.close();
  }
}

/** OpenCLIP's text weights (SD2's checkpoint names) as the rows of the Hugging Face weights we load them into. */
const OPEN_CLIP: [RegExp, (layer: string) => [string, number][]][] = [
  [/attn\.in_proj_weight$/, (l) => ["q_proj", "k_proj", "v_proj"].map((p, i) => [`${l}.self_attn.${p}.weight`, i])],
  [/attn\.out_proj\.weight$/, (l) => [[`${l}.self_attn.out_proj.weight`, 0]]],
  [/mlp\.c_fc\.weight$/, (l) => [[`${l}.mlp.fc1.weight`, 0]]],
  [/mlp\.c_proj\.weight$/, (l) => [[`${l}.mlp.fc2.weight`, 0]]],
];

/** Our parameters holding a reference weight: [key, its row block] (row blocks of the weight's own height). */
function ourKeys(key: string): [string, number][] {
  const m = /^cond_stage_model\.model\.transformer\.resblocks\.(\d+)\.(.+)$/.exec(key);
  if (!m) return [[key, 0]];
  const rule = OPEN_CLIP.find(([pattern]) => pattern.test(m[2]));
  if (!rule) throw new Error(`test: no rule for ${key}`);
  return rule[1](`${TEXT_PREFIX}encoder.layers.${m[1]}`);
}

async function snapshot(parameters: ReadonlyMap<string, Tensor>): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for (const [key, t] of parameters) {
    const data = await t.read();
    out.set(key, new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)));
  }
  return out;
}

async function uses(model: string, strengths: Awaited<ReturnType<typeof expected>>["strengths"]): Promise<LoraUse[]> {
  const use = (lora: Lora, s: { text: number; unet: number }) => ({ lora, strength: s.text, unetStrength: s.unet });
  return [
    use(await loadLora(`${loras}${model}.kohya.safetensors`), strengths.kohya),
    use(await loadLora(`${loras}${model}.peft.safetensors`), strengths.peft),
  ];
}

async function unetAndClip(model: LoadedModel, dump: Dump) {
  const { unet, clip } = model;
  if (!unet || !clip) throw new Error("test: the model has no UNet or text encoder");
  const floats = async (c: string, n: string) => {
    const { data, shape } = await dump.floats(c, "in", n);
    return Tensor.from(device, data, shape);
  };
  const eps = unet.forward({
    x: await floats("unet", "x"),
    timesteps: await floats("unet", "timesteps"),
    context: await floats("unet", "context"),
  });
  const { data: ids, shape } = await dump.ints("clip", "in", "input_ids");
  const out = clip.forward(Tensor.from(device, ids, shape, "i32"), { last: true, penultimate: true });
  const read = (t: Tensor | undefined) => (t as Tensor).toFloat32();
  return {
    eps: await eps.toFloat32(),
    last: await read(out.lastHiddenState),
    penultimate: await read(out.penultimateHiddenState),
  };
}

/** tiny-sd1/2 with the fixture's two LoRAs merged, and every parameter's bytes from before the merge. */
async function mergedModel(name: string, dtype: "f32" | "f16") {
  const model = await loadModel(`${dumps}${name}.safetensors`, { device, dtype, config: `${dumps}${name}.yaml` });
  const parameters = (model.unet as NonNullable<LoadedModel["unet"]>).vb.parameters;
  const { merged: reference, strengths } = await expected(name);
  const before = await snapshot(parameters);
  const merger = new MergedLoras(parameters, model.config as LdmConfig);
  await merger.set(await uses(name, strengths));
  /** Unloads and checks that every parameter holds its bytes from before the merge again. */
  const expectRestored = async () => {
    await merger.restore();
    const after = await snapshot(parameters);
    for (const [key, bytes] of before) expect(Buffer.compare(bytes, after.get(key) as Uint8Array), key).toBe(0);
  };
  return { model, parameters, reference, expectRestored };
}

describe.each(["tiny-sd1", "tiny-sd2"])("LoRA merged into %s", (name) => {
  it("equals the weights PyTorch merges (kohya f16 + PEFT f32 names, LoCon 3×3, text q/k/v), and unloads bit for bit", async () => {
    const { model, parameters, reference, expectRestored } = await mergedModel(name, "f32");
    const dump = await Dump.open(`${loras}${name}.expected.safetensors`);
    try {
      let worst = 0;
      for (const [key, weight] of reference) {
        for (const [ours, block] of ourKeys(key)) {
          const tensor = parameters.get(ours) as Tensor;
          const mine = await tensor.toFloat32();
          const part = weight.subarray(block * mine.length, (block + 1) * mine.length);
          // Float32 rounding: the merge sums rank-4 products (PyTorch in float32, we in float64) and adds.
          const scale = part.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
          const err = mine.reduce((m, v, i) => Math.max(m, Math.abs(v - part[i])), 0) / scale;
          worst = Math.max(worst, err);
          expect(err, `${ours} (reference ${key}, rows block ${block})`).toBeLessThan(2 ** -21);
        }
      }
      console.log(`${name}: ${reference.size} merged weights, worst relative error ${worst.toExponential(2)}`);
      // The UNet and text encoder on the merged weights against the reference modules on PyTorch's (the merge's
      // rounding is far below the 1e-4 of the component dumps; without the LoRAs they are far off).
      const out = await unetAndClip(model, dump);
      const errors = {
        eps: maxRelativeError(out.eps, (await dump.floats("unet", "out", "eps")).data),
        last: maxRelativeError(out.last, (await dump.floats("clip", "out", "last_hidden_state")).data),
        penultimate: maxRelativeError(
          out.penultimate,
          (await dump.floats("clip", "out", "penultimate_hidden_state")).data,
        ),
      };
      expect(Math.max(...Object.values(errors)), JSON.stringify(errors)).toBeLessThan(1e-4);
      await expectRestored();
      const unmerged = await unetAndClip(model, dump);
      expect(maxRelativeError(unmerged.eps, out.eps)).toBeGreaterThan(1e-2);
      expect(maxRelativeError(unmerged.penultimate, out.penultimate)).toBeGreaterThan(1e-2);
    } finally {
      await dump.close();
      model.dispose();
    }
  });
});

describe("LoRA on an f16 model", () => {
  it.skipIf(!device.features.shaderF16)(
    "merges in float32 and stores the weight rounded to f16 (within one f16 step of PyTorch's merge)",
    async () => {
      const { model, parameters, reference, expectRestored } = await mergedModel("tiny-sd1", "f16");
      try {
        for (const [key, weight] of reference) {
          const tensor = parameters.get(key) as Tensor;
          expect(tensor.dtype).toBe("f16");
          const mine = (await tensor.read()) as Uint16Array;
          const rounded = f32ArrayToF16(weight);
          // Round-to-nearest of values equal within float32 rounding: the same half, or the neighbour at a tie.
          const steps = mine.reduce((m, h, i) => Math.max(m, Math.abs(h - rounded[i])), 0);
          expect(steps, key).toBeLessThanOrEqual(1);
        }
        await expectRestored();
      } finally {
        model.dispose();
      }
    },
  );
});

describe("A1111's <lora:…> prompt syntax", () => {
  it("reads the name and the text-encoder and UNet multipliers, positional or named, and takes the tags out", () => {
    const prompt = "a <lora:a:0.8> b <lora:b> c <lora:c:0.5:-1> <lora:d:unet=0.3:te=2>";
    expect(loraTags(prompt)).toEqual([
      { name: "a", strength: 0.8, text: "<lora:a:0.8>" },
      { name: "b", strength: 1, text: "<lora:b>" },
      { name: "c", strength: 0.5, unetStrength: -1, text: "<lora:c:0.5:-1>" },
      { name: "d", strength: 2, unetStrength: 0.3, text: "<lora:d:unet=0.3:te=2>" },
    ]);
    expect(withoutLoraTags(prompt)).toBe("a  b  c  ");
    expect(loraTagText({ name: "c", strength: 0.5, unetStrength: -1 })).toBe("<lora:c:0.5:-1>");
    expect(loraTagText({ name: "a", strength: 0.8, unetStrength: 0.8 })).toBe("<lora:a:0.8>");
    expect(
      untaggedLoras(prompt, [
        { name: "a", strength: 0.8 },
        { name: "a", strength: 0.7 },
      ]),
    ).toEqual([{ name: "a", strength: 0.7 }]);
    expect(() => loraTags("<lora:x:strong>")).toThrow(
      '<lora:x:strong>: the text encoder multiplier "strong" is not a number',
    );
    expect(() => loraTags("<lora::1>")).toThrow("<lora::1>: no LoRA name");
  });
});

describe("LatentDiffusion.setLoras", () => {
  it("merges for the pipeline's runs, checks the prompt's tags against what is merged, and records the LoRAs", async () => {
    const folder = mkdtempSync(join(tmpdir(), "ldm-lora-vocab-"));
    const vocab = writeTinyVocab(join(folder, "tokenizer"), 1000);
    const pipe = await StableDiffusion.load(`${dumps}tiny-sd1.safetensors`, {
      device,
      config: `${dumps}tiny-sd1.yaml`,
      vocab,
    });
    try {
      const run = (prompt: string) => pipe.txt2img({ prompt, steps: 1, width: 32, height: 32, seed: 1 });
      await expect(run("a <lora:tiny-sd1.kohya:0.8> cat")).rejects.toThrow(
        "the prompt's <lora:tiny-sd1.kohya:0.8> is not merged into the weights: setLoras first",
      );
      const lora = await loadLora(`${loras}tiny-sd1.kohya.safetensors`);
      await pipe.setLoras([{ lora, strength: 0.8 }]);
      expect(pipe.loras).toEqual([{ lora, strength: 0.8 }]);
      await expect(run("a <lora:tiny-sd1.kohya:0.5> cat")).rejects.toThrow("at those multipliers (0.8, 0.8)");
      // The alias (ss_output_name) names it too; without a tag the merged LoRA applies all the same.
      for (const prompt of ["a <lora:tiny-sd1-kohya:0.8> cat", "a cat"]) {
        const { parameters } = await run(prompt);
        expect(parameters[0].loras).toEqual([
          { name: "tiny-sd1.kohya", strength: 0.8, hash: lora.hash?.slice(0, 12), path: lora.path },
        ]);
      }
      await pipe.setLoras([]);
      expect(pipe.loras).toEqual([]);
      expect((await run("a cat")).parameters[0].loras).toBeUndefined();
    } finally {
      pipe.dispose();
      rmSync(folder, { recursive: true, force: true });
    }
  });
});

describe("LoRA on an inpainting UNet", () => {
  it("merges an SD LoRA's conv_in into the first 4 of the 9 input channels, the other 5 untouched", async () => {
    const model = await loadModel(`${dumps}tiny-inpaint.safetensors`, { device, config: `${dumps}tiny-inpaint.yaml` });
    try {
      const parameters = (model.unet as NonNullable<LoadedModel["unet"]>).vb.parameters;
      const convIn = parameters.get("model.diffusion_model.input_blocks.0.0.weight") as Tensor;
      const [out, channels, kh, kw] = convIn.shape;
      expect(channels).toBe(9);
      const [rank, taps] = [2, 4 * kh * kw];
      const down = Float32Array.from({ length: rank * taps }, (_, i) => Math.sin(i) / 4);
      const up = Float32Array.from({ length: out * rank }, (_, i) => Math.cos(i) / 4);
      const tensors = new Map([
        ["lora_unet_conv_in.lora_down.weight", { shape: [rank, 4, kh, kw], data: down }],
        ["lora_unet_conv_in.lora_up.weight", { shape: [out, rank, 1, 1], data: up }],
      ]);
      const before = await convIn.toFloat32();
      const merger = new MergedLoras(parameters, model.config as LdmConfig);
      await merger.set([{ lora: { name: "conv", tensors: { origin: "conv", tensors, metadata: {} } }, strength: 0.5 }]);
      const after = await convIn.toFloat32();
      const row = channels * kh * kw;
      for (let o = 0; o < out; o++) {
        for (let i = 0; i < row; i++) {
          const w = o * row + i;
          if (i >= taps) expect(after[w], `row ${o}, tap ${i}`).toBe(before[w]);
          else {
            let delta = 0;
            for (let r = 0; r < rank; r++) delta += up[o * rank + r] * down[r * taps + i];
            expect(Math.abs(after[w] - (before[w] + 0.5 * delta)), `row ${o}, tap ${i}`).toBeLessThan(2 ** -21);
          }
        }
      }
    } finally {
      model.dispose();
    }
  });
});

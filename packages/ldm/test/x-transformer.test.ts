import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { VarBuilder } from "@ldm/nn";
import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { ldmConfigFromYaml, modelParamShapes } from "@ldm/weights";
import { type Checkpoint, openCheckpoint } from "@ldm/weights/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BERTEmbedder,
  bertEmbedderTransformer,
  TransformerWrapper,
  type XTransformerConfig,
} from "../src/models/x-transformer.ts";
import { BERT_MAX_LENGTH, BERT_VOCAB_SIZE, LayoutBuilder, type LayoutObject } from "../src/tokenizer/index.ts";
import { Dump } from "../src/validate/index.ts";
import { maxRelativeError } from "./helpers/compare.ts";

// tiny-txt2img: reference/make_text_dumps.py, CompVis/latent-diffusion's own BERTEmbedder (x_transformer.py) with
// random weights at the real vocabulary and length; cond.in.input_ids are bert-base-uncased ids of golden prompts.
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/dumps/${name}`, import.meta.url));
const PREFIX = "cond_stage_model";
const LDM_CONFIG = ldmConfigFromYaml(readFileSync(fixture("tiny-txt2img.yaml"), "utf8"), "tiny-txt2img.yaml");
const BERT = LDM_CONFIG.cond_stage;
if (BERT?.target !== "BERTEmbedder") throw new Error("tiny-txt2img.yaml: expected a BERTEmbedder");
const CONFIG: XTransformerConfig = bertEmbedderTransformer(BERT);

const device = await useDevice();
let checkpoint: Checkpoint;
let dump: Dump;
beforeAll(async () => {
  checkpoint = await openCheckpoint(fixture("tiny-txt2img.safetensors"));
  dump = await Dump.open(fixture("tiny-txt2img.dump.safetensors"));
});
afterAll(async () => {
  await checkpoint?.close();
  await dump?.close();
});

/** The encoder with the checkpoint's weights, through the single-file layout (which sets to_logits aside). */
async function encoder(cfg: XTransformerConfig = CONFIG): Promise<{ model: TransformerWrapper; vb: VarBuilder }> {
  const vb = VarBuilder.from(device, checkpoint.source);
  const model = new TransformerWrapper(vb.pp(PREFIX).pp("transformer"), cfg);
  await vb.load([PREFIX]);
  return { model, vb };
}

describe("TransformerWrapper (x_transformer.py) against CompVis/latent-diffusion", () => {
  it("reads the BERTEmbedder of the config: real vocabulary and length, x_transformer's 8 heads of 64", () => {
    expect(CONFIG).toEqual({
      num_tokens: BERT_VOCAB_SIZE,
      max_seq_len: BERT_MAX_LENGTH,
      dim: 16,
      depth: 2,
      heads: 8,
      dim_head: 64,
      ff_mult: 4,
    });
  });

  it("architecture.ts lists exactly the checkpoint's weights (UNet, VAE, BERTEmbedder with to_logits)", () => {
    const shapes = modelParamShapes(LDM_CONFIG);
    const ignored = checkpoint.ignored.map((i) => [i.key, [...(checkpoint.files[0].tensors.get(i.key)?.shape ?? [])]]);
    const stored = new Map([
      ...[...checkpoint.source.keys()].map((k) => [k, [...(checkpoint.source.describe(k)?.shape ?? [])]] as const),
      ...(ignored as [string, number[]][]),
    ]);
    expect(new Map([...shapes].sort())).toEqual(new Map([...stored].sort()));
  });

  it("loads every stored key of the BERTEmbedder under its checkpoint name; to_logits is set aside", async () => {
    const names = [...checkpoint.source.keys()];
    expect(names).toContain(`${PREFIX}.transformer.attn_layers.layers.3.1.net.0.0.weight`);
    expect(names).toContain(`${PREFIX}.transformer.pos_emb.emb.weight`);
    expect(checkpoint.ignored.map((i) => i.key).sort()).toEqual([
      `${PREFIX}.transformer.to_logits.bias`,
      `${PREFIX}.transformer.to_logits.weight`,
    ]);
    expect(checkpoint.textNaming).toBe("none");
    const vb = VarBuilder.from(device, checkpoint.source);
    const bert = new BERTEmbedder(vb.pp(PREFIX), BERT);
    await vb.load([PREFIX]);
    const ids = await dump.ints("cond", "in", "input_ids");
    expect(() => bert.checkIds(ids.data, "cond.in.input_ids")).not.toThrow();
    expect(() => bert.checkIds([101, 30522], "prompt")).toThrow(
      /prompt: token id 30522 at 1 is outside the BERTEmbedder's vocabulary of 30522/,
    );
    const input = Tensor.from(device, ids.data, ids.shape, "i32");
    const out = bert.forward(input);
    const error = maxRelativeError(await out.toFloat32(), (await dump.floats("cond", "out", "c_crossattn")).data);
    expect(error).toBeLessThanOrEqual(1e-4);
    input.dispose();
    out.dispose();
    vb.dispose();
  });

  it("matches the upstream encoder's c_crossattn within 1e-4 of max|ref| (f32)", async () => {
    const { model, vb } = await encoder();
    const ids = await dump.ints("cond", "in", "input_ids");
    expect(ids.shape).toEqual([2, BERT_MAX_LENGTH]);
    const reference = await dump.floats("cond", "out", "c_crossattn");
    const input = Tensor.from(device, ids.data, ids.shape, "i32");
    const out = model.forward(input);
    expect(out.shape).toEqual([2, BERT_MAX_LENGTH, CONFIG.dim]);
    const ours = await out.toFloat32();
    const error = maxRelativeError(ours, reference.data);
    expect(error).toBeLessThanOrEqual(1e-4);
    // A shorter sequence takes the first positions (upstream's arange(n)).
    const short = model.forward(Tensor.from(device, ids.data.slice(0, 10), [1, 10], "i32"));
    expect(short.shape).toEqual([1, 10, CONFIG.dim]);
    for (const t of [input, out, short]) t.dispose();
    vb.dispose();
  });

  it("is sensitive to what the dump pins: one head instead of eight moves the output far past the bound", async () => {
    const { model, vb } = await encoder({ ...CONFIG, heads: 1, dim_head: 512 });
    const ids = await dump.ints("cond", "in", "input_ids");
    const input = Tensor.from(device, ids.data, ids.shape, "i32");
    const out = model.forward(input);
    const error = maxRelativeError(await out.toFloat32(), (await dump.floats("cond", "out", "c_crossattn")).data);
    expect(error).toBeGreaterThan(1e-2);
    input.dispose();
    out.dispose();
    vb.dispose();
  });

  it("refuses ids longer than max_seq_len, non-integer ids and a bad config", async () => {
    const { model, vb } = await encoder();
    const long = Tensor.from(device, new Int32Array(78), [1, 78], "i32");
    expect(() => model.forward(long)).toThrow(/input_ids .* must be i32 \[B, L\] with L ≤ 77/);
    long.dispose();
    vb.dispose();
    expect(() => new TransformerWrapper(VarBuilder.from(device, checkpoint.source), { ...CONFIG, depth: 0 })).toThrow(
      /x-transformer: depth 0 must be a positive integer/,
    );
  });
});

describe("layout2img's BERTEmbedder (no tokenizer: taming's layout tokens) against CompVis/latent-diffusion", () => {
  it("takes the LayoutBuilder's sequences and matches upstream's c_crossattn within 1e-4 of max|ref|", async () => {
    const config = ldmConfigFromYaml(readFileSync(fixture("tiny-layout2img.yaml"), "utf8"), "tiny-layout2img.yaml");
    const stage = config.cond_stage;
    if (stage?.target !== "BERTEmbedder") throw new Error("tiny-layout2img.yaml: expected a BERTEmbedder");
    expect([stage.vocab_size, stage.max_seq_len, stage.use_tokenizer]).toEqual([8192, 92, false]);
    const layoutCheckpoint = await openCheckpoint(fixture("tiny-layout2img.safetensors"));
    const layoutDump = await Dump.open(fixture("tiny-layout2img.dump.safetensors"));
    try {
      // The dump's ids are layouts 2 and 4 of the builder's golden file, as LayoutBuilder builds them.
      const layouts: { layout: LayoutObject[] }[] = JSON.parse(
        readFileSync(new URL("./fixtures/tokenizer/layout-cases.json", import.meta.url), "utf8"),
      ).cases;
      const builder = LayoutBuilder.forCondStage(stage.vocab_size, stage.max_seq_len);
      const ids = await layoutDump.ints("cond", "in", "input_ids");
      expect(Array.from(ids.data)).toEqual([...builder.build(layouts[2].layout), ...builder.build(layouts[4].layout)]);
      const vb = VarBuilder.from(device, layoutCheckpoint.source);
      const bert = new BERTEmbedder(vb.pp(PREFIX), stage);
      await vb.load([PREFIX]);
      const input = Tensor.from(device, ids.data, ids.shape, "i32");
      const out = bert.forward(input);
      expect(out.shape).toEqual([2, 92, 16]);
      const reference = await layoutDump.floats("cond", "out", "c_crossattn");
      expect(maxRelativeError(await out.toFloat32(), reference.data)).toBeLessThanOrEqual(1e-4);
      input.dispose();
      out.dispose();
      vb.dispose();
    } finally {
      await layoutCheckpoint.close();
      await layoutDump.close();
    }
  });
});

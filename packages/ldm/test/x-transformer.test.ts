import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { VarBuilder } from "@ldm/nn";
import { Device, Tensor } from "@ldm/tensor";
import { ldmConfigFromYaml, MappedWeightSource, modelParamShapes, type SafetensorsFile } from "@ldm/weights";
import { openSafetensors } from "@ldm/weights/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bertEmbedderTransformer, TransformerWrapper, type XTransformerConfig } from "../src/models/x-transformer.ts";
import { BERT_MAX_LENGTH, BERT_VOCAB_SIZE } from "../src/tokenizer/index.ts";
import { Dump } from "../src/validate/index.ts";
import { maxRelativeError } from "./helpers/compare.ts";

// tiny-txt2img: reference/make_text_dumps.py, CompVis/latent-diffusion's own BERTEmbedder (x_transformer.py) with
// random weights at the real vocabulary and length; cond.in.input_ids are bert-base-uncased ids of golden prompts.
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/dumps/${name}`, import.meta.url));
const PREFIX = "cond_stage_model.transformer";
const LDM_CONFIG = ldmConfigFromYaml(readFileSync(fixture("tiny-txt2img.yaml"), "utf8"), "tiny-txt2img.yaml");
if (LDM_CONFIG.cond_stage?.target !== "BERTEmbedder") throw new Error("tiny-txt2img.yaml: expected a BERTEmbedder");
const CONFIG: XTransformerConfig = bertEmbedderTransformer(LDM_CONFIG.cond_stage);

let device: Device;
let file: SafetensorsFile;
let dump: Dump;
beforeAll(async () => {
  device = await Device.create();
  file = await openSafetensors(fixture("tiny-txt2img.safetensors"));
  dump = await Dump.open(fixture("tiny-txt2img.dump.safetensors"));
});
afterAll(async () => {
  await file?.close();
  await dump?.close();
  device?.destroy();
});

/** The checkpoint's `cond_stage_model.transformer.*` tensors under their own names. */
function transformerSource(): MappedWeightSource {
  const table = new Map(
    [...file.tensors.values()]
      .filter((e) => e.name.startsWith(`${PREFIX}.`))
      .map((e) => [e.name, { file, stored: e.name, shape: e.shape, transform: { kind: "none" as const } }]),
  );
  return new MappedWeightSource(file.name, table);
}

async function encoder(cfg: XTransformerConfig = CONFIG): Promise<{ model: TransformerWrapper; vb: VarBuilder }> {
  const vb = VarBuilder.from(device, transformerSource());
  const model = new TransformerWrapper(vb.pp(PREFIX), cfg);
  // to_logits is stored (the checkpoint's language-model head) but return_embeddings never reads it.
  vb.pp(PREFIX).pp("to_logits").get("weight", [cfg.num_tokens, cfg.dim]);
  vb.pp(PREFIX).pp("to_logits").get("bias", [cfg.num_tokens]);
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
    const stored = new Map(
      [...file.tensors.values()].filter((e) => e.name.includes(".")).map((e) => [e.name, [...e.shape]]),
    );
    expect(new Map([...shapes].sort())).toEqual(new Map([...stored].sort()));
  });

  it("reads every stored key of the BERTEmbedder under its checkpoint name", async () => {
    const names = [...transformerSource().keys()];
    expect(names).toContain(`${PREFIX}.attn_layers.layers.3.1.net.0.0.weight`);
    expect(names).toContain(`${PREFIX}.pos_emb.emb.weight`);
    const { vb } = await encoder();
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
    expect(() => new TransformerWrapper(VarBuilder.from(device, transformerSource()), { ...CONFIG, depth: 0 })).toThrow(
      /x-transformer: depth 0 must be a positive integer/,
    );
  });
});

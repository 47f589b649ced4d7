/**
 * The paper's own models (CompVis/latent-diffusion), as tiny random-weight versions of their configs run by the
 * ORIGINAL upstream code (reference/make_ldm_family_dumps.py): every component and DDIM sampling with eta 0 and
 * eta 1 (global_seed) against those dumps, at validate's f32 tolerance (1e-4 of max|ref|).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { useDevice } from "@ldm/tensor/testing";
import { encode } from "fast-png";
import { describe, expect, it } from "vitest";
import { buildProgram } from "../src/cli/main.ts";
import { decodePng, encodePng, type RgbaImage } from "../src/image/png.ts";
import { formatInfotext } from "../src/pipeline/infotext.ts";
import { LatentDiffusion, type SegmentationMap } from "../src/pipeline/latent-diffusion.ts";
import { DEFAULT_GUIDANCE } from "../src/pipeline/model-inputs.ts";
import { Dump } from "../src/validate/dump.ts";
import { type ValidationReport, validate } from "../src/validate/index.ts";
import { runCli } from "./helpers/run-cli.ts";

const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
const device = await useDevice();

function summary(report: ValidationReport): string {
  return report.checks
    .map((c) => `${c.key}: max abs ${c.maxAbs.toExponential(2)}, rel ${c.relative.toExponential(2)}`)
    .join("\n");
}

/** What a VQ first stage's dumps check: h, its codes and their indices, and the decoder. */
const VQ_FIRST_STAGE = ["vae.encode.out.h", "vae.encode.out.quant", "vae.encode.out.indices", "vae.decode.out.x"];

const OUTPUTS: Record<string, string[]> = {
  "tiny-celebahq": [...VQ_FIRST_STAGE, "unet.out.eps"],
  "tiny-churches": ["vae.encode.out.moments", "vae.decode.out.x", "unet.out.eps"],
  "tiny-cin": [...VQ_FIRST_STAGE, "cond.out.c_crossattn", "unet.out.eps"],
  "tiny-bsr": [...VQ_FIRST_STAGE, "unet.out.eps"],
  "tiny-seg": [...VQ_FIRST_STAGE, "cond.out.c_concat", "unet.out.eps"],
  "tiny-inpainting": [...VQ_FIRST_STAGE, "cond.out.c_concat", "unet.out.eps"],
  "tiny-cin-f8": [...VQ_FIRST_STAGE, "cond.out.c_crossattn", "unet.out.eps"],
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
    // The big inpainting model's result is also the prediction pasted into the image (scripts/inpaint.py).
    const inpainted = name === "tiny-inpainting" ? ["sample.out.inpainted"] : [];
    expect(report.checks.map((c) => c.key).sort()).toEqual(["sample.out.image", ...inpainted, "sample.out.z_0"]);
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
    // cin256-v2's last class is "no class": the notebook's scale 3 by default; cin-ldm-vq-f8's 1000 classes are
    // all real: unguided by default, guided only against a named class.
    expect(cin.defaultGuidanceScale).toBe(DEFAULT_GUIDANCE.class);
    expect(DEFAULT_GUIDANCE.class).toBe(3);
    expect(faces.defaultGuidanceScale).toBe(1);
    const f8 = await load("tiny-cin-f8");
    expect(f8.inputs.guidanceFamily).toBe("unguided");
    const unguided = await f8.generate({ classLabel: 999, steps: 2, seed: 1 });
    expect(unguided.parameters[0].guidanceScale).toBe(1);
    expect([unguided.images[0].width, unguided.images[0].height]).toEqual([32, 32]);
    await expect(f8.generate({ classLabel: 5, guidanceScale: 3, steps: 2 })).rejects.toThrow(
      /1000 classes and no "no class".*uncondClassLabel/,
    );
    const guided = await f8.generate({ classLabel: 5, uncondClassLabel: 7, guidanceScale: 3, steps: 2, seed: 1 });
    expect(guided.parameters[0].guidanceScale).toBe(3);
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
      const info = await runCli("info", model);
      expect(info.code, info.err).toBe(0);
      expect(info.out).toMatch(/^first stage: VQModelInterface \(64 codes of 3\)$/m);
      expect(info.out).toMatch(/^cond stage: ClassEmbedder-conditioned, conditioning key crossattn$/m);
      expect(info.out).toMatch(/^classes: 11 \(0 to 10; 10 is "no class", guidance's unconditional class by default/m);
      const f8 = await runCli("info", join(DUMPS, "tiny-cin-f8.safetensors"), "--json");
      expect(JSON.parse(f8.out).classes).toEqual({ count: 1000, unconditional: null });
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

it("--uncond-class picks guidance's unconditional class; the PNG records it and --params-from restores it", async () => {
  const out = mkdtempSync(join(tmpdir(), "ldm-uncond-"));
  try {
    const png = (name: string) => join(out, name);
    const pixels = (name: string) => decodePng(readFileSync(png(name)), name).data;
    const generate = async (model: string, name: string, ...flags: string[]) => {
      const model_ = join(DUMPS, `${model}.safetensors`);
      return runCli("generate", "--model", model_, "--steps", "2", "--seed", "1", ...flags, "--out", png(name));
    };
    const cin = (name: string, ...flags: string[]) => generate("tiny-cin", name, "--class", "3", ...flags);
    // tiny-cin's 11th class (10) is its "no class", guidance's default: naming it changes nothing; another does.
    for (const [name, flags] of [
      ["default.png", []],
      ["named.png", ["--uncond-class", "10"]],
      ["other.png", ["--uncond-class", "4"]],
    ] as const) {
      const run = await cin(name, "--cfg", "3", ...flags);
      expect(run.code, run.err).toBe(0);
    }
    expect(pixels("named.png")).toEqual(pixels("default.png"));
    expect(pixels("other.png")).not.toEqual(pixels("default.png"));
    const again = await runCli("generate", "--params-from", png("other.png"), "--out", png("again.png"));
    expect(again.code, again.err).toBe(0);
    expect(pixels("again.png")).toEqual(pixels("other.png"));

    // cin-ldm-vq-f8 has no "no class": guided only against a named one.
    const f8 = (name: string, ...flags: string[]) => generate("tiny-cin-f8", name, "--class", "5", ...flags);
    expect((await f8("f8.png", "--cfg", "3", "--uncond-class", "7")).code).toBe(0);
    // One at a time: runCli captures the console.
    const refusals: [() => Promise<{ code: number; err: string }>, RegExp][] = [
      [() => f8("x.png", "--cfg", "3"), /1000 classes and no "no class".*uncondClassLabel/],
      [() => f8("x.png", "--uncond-class", "7"), /^ldm: unconditional class 7: it is guidance's, and guidance scale 1/],
      [() => f8("x.png", "--cfg", "3", "--uncond-class", "1000"), /unconditional class 1000 is out of range/],
      [() => generate("tiny-celebahq", "x.png", "--uncond-class", "1"), /takes no unconditional class$/],
    ];
    for (const [run, message] of refusals) {
      const { code, err } = await run();
      expect(code).toBe(1);
      expect(err.trim().split("\n").pop()).toMatch(message);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

it("ldm info says which UNet weights sample: the EMA copy where the config's use_ema holds (default), as loadModel", async () => {
  const info = async (name: string, ...flags: string[]) => {
    const run = await runCli("info", join(DUMPS, `${name}.safetensors`), ...flags);
    expect(run.code, run.err).toBe(0);
    return run.out;
  };
  for (const name of ["tiny-celebahq", "tiny-bsr", "tiny-seg"]) {
    const out = await info(name);
    expect(out).toMatch(/EMA weights: used for the UNet/);
    expect(out).not.toMatch(/EMA copy of the UNet/);
  }
  expect(await info("tiny-celebahq", "--ema")).toMatch(/EMA weights: used for the UNet/);
});

describe("super-resolution and semantic synthesis from the library and the CLI", () => {
  const load = (name: string) =>
    LatentDiffusion.load(join(DUMPS, `${name}.safetensors`), { device, config: join(DUMPS, `${name}.yaml`) });
  /** An opaque RGB test pattern. */
  const picture = (width: number, height: number): RgbaImage => {
    const data = new Uint8ClampedArray(width * height * 4);
    for (let p = 0; p < width * height; p++) {
      data.set([(p * 37) % 256, (p * 11 + 40) % 256, (p * 5 + 90) % 256, 255], 4 * p);
    }
    return { width, height, data };
  };
  /** 4×4 blocks of classes 0 … classes − 1. */
  const blocks = (side: number, classes: number): SegmentationMap & { labels: Uint8Array } => {
    const labels = new Uint8Array(side * side);
    for (let p = 0; p < labels.length; p++) {
      labels[p] = (Math.floor((p % side) / 4) * 5 + Math.floor(Math.floor(p / side) / 4) * 3) % classes;
    }
    return { width: side, height: side, labels };
  };
  const maxRelative = (a: Float32Array, b: Float32Array) => {
    let diff = 0;
    let ref = 0;
    b.forEach((v, i) => {
      diff = Math.max(diff, Math.abs(a[i] - v));
      ref = Math.max(ref, Math.abs(v));
    });
    return diff / ref;
  };

  it("upscale: 4× by DDIM with eta 1 (the notebook's); one crop over the whole latent is the untiled UNet; past one, crops and VAE tiles", async () => {
    const sr = await load("tiny-bsr");
    const low = picture(8, 8);
    const up = await sr.upscale({ image: low, steps: 2, seed: 1 });
    expect([up.images[0].width, up.images[0].height]).toEqual([32, 32]);
    expect(up.parameters[0].eta).toBe(1);
    const plain = await sr.generate({ lowRes: low, steps: 2, seed: 1, eta: 1 });
    expect(up.latents).toEqual(plain.latents);
    const oneCrop = await sr.generate({ lowRes: low, steps: 2, seed: 1, eta: 1, splitInput: { size: 8, stride: 4 } });
    expect(maxRelative(oneCrop.latents, plain.latents)).toBeLessThan(1e-6);
    const big = await sr.upscale({ image: picture(12, 10), steps: 2, seed: 1, splitInput: { size: 8, stride: 4 } });
    expect([big.images[0].width, big.images[0].height]).toEqual([48, 40]);
    const whole = await sr.upscale({ image: picture(12, 10), steps: 2, seed: 1, splitInput: false });
    expect(maxRelative(big.latents, whole.latents)).toBeGreaterThan(1e-3);
  });

  it("upscale from an 8-bit image, a seed and the defaults reproduces the notebook's run from torch.manual_seed(seed)", async () => {
    // reference/make_ldm_family_dumps.py: ToTensor's k / 255 then 2c − 1, DDIMSampler drawing x_T and each step's
    // noise from the global generator (eta 1), 10 steps, decoded with quantization.
    const dump = await Dump.open(join(DUMPS, "tiny-bsr.notebook.safetensors"));
    try {
      const pixels = await dump.floats("notebook", "in", "pixels");
      const [, , h, w] = pixels.shape;
      const data = new Uint8ClampedArray(w * h * 4).fill(255);
      for (let p = 0; p < w * h; p++) for (let c = 0; c < 3; c++) data[4 * p + c] = pixels.data[c * w * h + p];
      const sr = await load("tiny-bsr");
      const result = await sr.upscale({
        image: { width: w, height: h, data },
        seed: Number(dump.metadata.seed),
        steps: 10,
      });
      const z0 = await dump.floats("notebook", "out", "z_0");
      const image = await dump.floats("notebook", "out", "image");
      const errors = [
        maxRelative(result.latents, z0.data),
        maxRelative(await sr.decodePixels(z0.data, z0.shape), image.data),
      ];
      console.log(
        `notebook run: z_0 ${errors[0].toExponential(2)}, image (our decoder on its z_0) ${errors[1].toExponential(2)} of max|ref|`,
      );
      for (const error of errors) expect(error).toBeLessThan(1e-4);
    } finally {
      await dump.close();
    }
  });

  it("upscale and generate refuse what super-resolution cannot take, in one line each", async () => {
    const sr = await load("tiny-bsr");
    const clear = picture(8, 8);
    clear.data[4 * (2 * 8 + 3) + 3] = 0;
    await expect(sr.upscale({ image: clear, steps: 1 })).rejects.toThrow(
      /the image has transparent pixels \(alpha 0 at \(3, 2\)\): super-resolution takes RGB/,
    );
    await expect(sr.upscale({ image: picture(1, 5), steps: 1 })).rejects.toThrow(
      /the image is 1×5, too small: this model upscales images of at least 2×2 \(its UNet halves the size 1 times\)/,
    );
    await expect(sr.upscale({ image: picture(2049, 8), steps: 1 })).rejects.toThrow(/would pass 8192 pixels a side/);
    await expect(sr.upscale({ image: picture(8, 8), splitInput: { size: 4, stride: 5 } })).rejects.toThrow(
      /stride 5 must be integers with 1 ≤ stride ≤ size/,
    );
    await expect(sr.generate({ steps: 1 })).rejects.toThrow(/super-resolution model: use upscale/);
    await expect(sr.generate({ lowRes: picture(8, 8), width: 64, height: 64, steps: 1 })).rejects.toThrow(
      /the low-resolution image is 8×8; this model upscales 16×16 to 64×64/,
    );
    await expect(sr.generate({ lowRes: picture(8, 8), segmentation: blocks(32, 3), steps: 1 })).rejects.toThrow(
      /it takes no segmentation map/,
    );
    const seg = await load("tiny-seg");
    await expect(seg.upscale({ image: picture(8, 8) })).rejects.toThrow(
      /this model is .*SpatialRescaler.*, not a super-resolution model/,
    );
  });

  it("generate with a segmentation map's class ids and a seed reproduces the original one-hot, SpatialRescaler and DDIM run", async () => {
    const dump = await Dump.open(join(DUMPS, "tiny-seg.generate.safetensors"));
    try {
      const ids = await dump.floats("generate", "in", "labels");
      const [, h, w] = ids.shape;
      const segmentation = { width: w, height: h, labels: Uint8Array.from(ids.data) };
      const seg = await load("tiny-seg");
      const result = await seg.generate({
        segmentation,
        seed: Number(dump.metadata.seed),
        steps: 10,
      });
      const error = maxRelative(result.latents, (await dump.floats("generate", "out", "z_0")).data);
      console.log(`segmentation run: z_0 ${error.toExponential(2)} of max|ref|`);
      expect(error).toBeLessThan(1e-4);
      // The map read transposed conditions another image: the check sees rows and columns.
      const transposed = Uint8Array.from(
        { length: w * h },
        (_, p) => segmentation.labels[(p % w) * w + Math.floor(p / w)],
      );
      const wrong = await seg.generate({
        segmentation: { ...segmentation, labels: transposed },
        seed: Number(dump.metadata.seed),
        steps: 10,
      });
      expect(maxRelative(wrong.latents, result.latents)).toBeGreaterThan(1e-3);
    } finally {
      await dump.close();
    }
  });

  it("generate with a segmentation map: the output its size; wrong ids, sizes and types get one-line errors", async () => {
    const seg = await load("tiny-seg");
    const result = await seg.generate({ segmentation: blocks(32, 12), steps: 2, seed: 1 });
    expect([result.images[0].width, result.images[0].height]).toEqual([32, 32]);
    const other = await seg.generate({ segmentation: blocks(32, 5), steps: 2, seed: 1 });
    expect(maxRelative(other.latents, result.latents)).toBeGreaterThan(1e-3);
    const outside = blocks(32, 12);
    outside.labels[5 * 32 + 7] = 12;
    await expect(seg.generate({ segmentation: outside, steps: 1 })).rejects.toThrow(
      /the segmentation map has class 12 at \(7, 5\): this model has 12 classes \(0 to 11\), the map's ids go up to 12/,
    );
    await expect(seg.generate({ segmentation: blocks(30, 12), steps: 1 })).rejects.toThrow(
      /the segmentation map is 30×30: its sides must be multiples of 4/,
    );
    await expect(seg.generate({ segmentation: blocks(32, 12), width: 64, steps: 1 })).rejects.toThrow(
      /the segmentation map is 32×32, the output 64×32: they must match/,
    );
    const negative = { width: 4, height: 4, labels: new Int32Array(16).fill(-1) };
    await expect(seg.generate({ segmentation: negative, steps: 1 })).rejects.toThrow(
      /class -1 at \(0, 0\): class ids are ≥ 0/,
    );
    const floats = { width: 4, height: 4, labels: new Float32Array(16) } as unknown as SegmentationMap;
    await expect(seg.generate({ segmentation: floats, steps: 1 })).rejects.toThrow(
      /segmentation.labels must be 16 class ids \(4×4\) in a Uint8Array, Uint16Array or Int32Array/,
    );
    await expect(seg.generate({ steps: 1 })).rejects.toThrow(/semantic synthesis model: it needs a segmentation map/);
  });

  it("ldm upscale and ldm generate --segmentation write the library's pixels; bad files are one line", async () => {
    const out = mkdtempSync(join(tmpdir(), "ldm-srseg-"));
    const file = (name: string) => join(out, name);
    try {
      const quick = ["--steps", "2", "--seed", "3"];
      const low = picture(8, 8);
      writeFileSync(file("low.png"), encodePng(low));
      const sr = join(DUMPS, "tiny-bsr.safetensors");
      const up = await runCli("upscale", file("low.png"), "--model", sr, ...quick, "--out", file("high.png"));
      expect(up.code, up.err).toBe(0);
      const library = await (await load("tiny-bsr")).upscale({ image: low, steps: 2, seed: 3 });
      const high = decodePng(readFileSync(file("high.png")), "high.png");
      expect([high.width, high.height]).toEqual([32, 32]);
      expect(high.data).toEqual(library.images[0].data);
      // A1111's PNG Info reads what ran, as for generate.
      expect(high.text.parameters).toBe(formatInfotext(library.parameters[0]));
      expect(high.text.parameters).toMatch(
        /^Steps: 2, Sampler: DDIM, CFG scale: 1, Seed: 3, Size: 32x32, Model: tiny-bsr, .*Eta DDIM: 1/,
      );

      const map = blocks(32, 12);
      writeFileSync(file("map.png"), encode({ width: 32, height: 32, data: map.labels, channels: 1, depth: 8 }));
      const seg = join(DUMPS, "tiny-seg.safetensors");
      const made = await runCli(
        "generate",
        "--model",
        seg,
        "--segmentation",
        file("map.png"),
        ...quick,
        "--out",
        file("seg.png"),
      );
      expect(made.code, made.err).toBe(0);
      const fromLibrary = await (await load("tiny-seg")).generate({ segmentation: map, steps: 2, seed: 3 });
      expect(decodePng(readFileSync(file("seg.png")), "seg.png").data).toEqual(fromLibrary.images[0].data);

      const failures: [string[], RegExp][] = [
        [["upscale", file("low.png"), "--model", seg, "--steps", "1"], /not a super-resolution model/],
        [["upscale", file("low.png"), "--model", sr, "--tile", "4", "--no-tiles"], /--tile and --no-tiles contradict/],
        [
          ["generate", "--model", seg, "--segmentation", file("low.png"), "--steps", "1"],
          /--segmentation .*low.png is an RGBA PNG: a segmentation map is an index PNG/,
        ],
        [
          ["generate", "--model", seg, "--segmentation", file("none.png"), "--steps", "1"],
          /cannot read --segmentation .*none.png: ENOENT/,
        ],
      ];
      const outside = new Uint8Array(map.labels);
      outside[0] = 200;
      writeFileSync(file("outside.png"), encode({ width: 32, height: 32, data: outside, channels: 1, depth: 8 }));
      failures.push([
        ["generate", "--model", seg, "--segmentation", file("outside.png"), "--steps", "1"],
        /class 200 at \(0, 0\): this model has 12 classes/,
      ]);
      for (const [args, message] of failures) {
        const failed = await runCli(...args);
        expect(failed.code, failed.err).toBe(1);
        expect(failed.err).toMatch(message);
        expect(failed.err.trim().split("\n").pop()).toMatch(/^ldm: /);
      }
      const program = await buildProgram();
      const help = (name: string) => program.commands.find((c) => c.name() === name)?.helpInformation();
      expect(help("upscale")).toMatch(/--steps <n> +DDIM steps \(default 100[\s\S]*--tile <cells>[\s\S]*--no-tiles/);
      expect(help("generate")).toMatch(/--segmentation <png> +semantic synthesis models:[\s\S]*index PNG/);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

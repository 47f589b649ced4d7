/**
 * First stages saved alone (models/first_stage_models/*: VQModel and AutoencoderKL at the top of their YAML, keys
 * without a prefix, their training loss's tensors beside them): tiny-vq-f4 and tiny-kl-f8 from the ORIGINAL
 * modules (reference/make_ldm_family_extra_dumps.py) through ldm info, validate and ldm vae encode / decode; and
 * ldm vae on LatentDiffusion checkpoints (their first_stage_model.*), scaled as upstream's
 * get_first_stage_encoding / decode_first_stage, against the loss and sample dumps of the original code.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { useDevice } from "@ldm/tensor/testing";
import { convertElements, isFloatStoredDType, ldmConfigFromYaml } from "@ldm/weights";
import { openSafetensors, writeSafetensors } from "@ldm/weights/node";
import { afterAll, describe, expect, it } from "vitest";
import { pixelsToRgba } from "../src/image/pixels.ts";
import { decodePng, encodePng } from "../src/image/png.ts";
import { Dump, type HostTensor } from "../src/validate/dump.ts";
import { validate } from "../src/validate/index.ts";
import { maxRelativeError } from "./helpers/compare.ts";
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

/** A tensor of a safetensors file as numbers (float dtypes as float32, I64 as integers), with its metadata. */
async function readTensor(path: string, name: string) {
  const file = await openSafetensors(path);
  try {
    const entry = file.tensors.get(name);
    if (!entry) throw new Error(`${path} has no ${name}`);
    const bytes = await file.readBytes(name);
    let data: Float32Array;
    if (isFloatStoredDType(entry.dtype)) {
      data = new Float32Array(entry.size);
      convertElements(entry.dtype, "f32", bytes, new Uint8Array(data.buffer), entry.size);
    } else {
      expect(entry.dtype).toBe("I64");
      data = Float32Array.from(new BigInt64Array(bytes.slice().buffer), Number);
    }
    return { data, shape: entry.shape, metadata: file.metadata };
  } finally {
    await file.close();
  }
}

const work = mkdtempSync(join(tmpdir(), "ldm-vae-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** The round-trip dump's input pixels (0–255) as the PNG the CLI reads; returns its path. */
async function writeInputPng(dump: Dump, png: string): Promise<string> {
  const pixels = await dump.floats("roundtrip", "in", "pixels");
  const signed = pixels.data.map((v) => (v / 255) * 2 - 1);
  writeFileSync(png, encodePng(pixelsToRgba(signed, pixels.shape)[0]));
  return png;
}

describe.each([
  ["tiny-vq-f4", "VQModel", ["h", "indices"]],
  ["tiny-kl-f8", "AutoencoderKL", ["mode"]],
])("ldm vae encode / decode on %s", (name, target, latents) => {
  const roundtrip = file(`${name}.roundtrip.safetensors`);
  const model = ["--model", file(`${name}.safetensors`)];

  it("an 8-bit PNG's latent and its decoding are the original module's", async () => {
    const dump = await Dump.open(roundtrip);
    try {
      const png = await writeInputPng(dump, join(work, `${name}.png`));
      const latent = join(work, `${name}.safetensors`);
      const encoded = await runCli("vae", "encode", png, ...model, "--out", latent);
      expect(encoded.code, encoded.err).toBe(0);
      expect(encoded.out).toContain(`(${target}: `);
      const [ours, theirs] = await Promise.all([
        readTensor(latent, "latent"),
        dump.floats("roundtrip", "out", latents[0]),
      ]);
      expect(ours.shape).toEqual(theirs.shape);
      expect(ours.metadata.first_stage).toBe(target);
      const error = maxRelativeError(ours.data, theirs.data);
      console.log(`${name} ${latents[0]}: ${error.toExponential(2)} of max|ref|`);
      expect(error).toBeLessThan(1e-4);
      if (latents[1]) {
        const indices = await dump.floats("roundtrip", "out", "indices");
        expect((await readTensor(latent, "indices")).data).toEqual(indices.data);
      }

      const image = join(work, `${name}-decoded.png`);
      const decoded = await runCli("vae", "decode", latent, ...model, "--out", image);
      expect(decoded.code, decoded.err).toBe(0);
      const x = await dump.floats("roundtrip", "out", "x");
      const [expected] = pixelsToRgba(x.data, x.shape);
      const written = decodePng(readFileSync(image), "decoded");
      expect([written.width, written.height]).toEqual([expected.width, expected.height]);
      // 8 bits of an f32 decoding: a value within f32 noise of a rounding boundary may land one level off.
      const off = written.data.map((v, i) => Math.abs(v - expected.data[i]));
      console.log(`${name} decoded: max ${Math.max(...off)} level(s) off, ${off.filter((d) => d).length} values`);
      expect(Math.max(...off)).toBeLessThanOrEqual(1);
    } finally {
      await dump.close();
    }
  });

  it.skipIf(target !== "AutoencoderKL")(
    "--sample --seed draws posterior.sample() after torch.manual_seed",
    async () => {
      const dump = await Dump.open(roundtrip);
      try {
        const png = await writeInputPng(dump, join(work, `${name}-sample.png`));
        const latent = join(work, `${name}-sample.safetensors`);
        const seed = dump.metadata.seed;
        const run = await runCli("vae", "encode", png, ...model, "--sample", "--seed", seed, "--out", latent);
        expect(run.code, run.err).toBe(0);
        const [ours, theirs] = await Promise.all([
          readTensor(latent, "latent"),
          dump.floats("roundtrip", "out", "sample"),
        ]);
        expect(ours.metadata.latent).toBe(`posterior sample, seed ${seed}`);
        expect(maxRelativeError(ours.data, theirs.data)).toBeLessThan(1e-4);
      } finally {
        await dump.close();
      }
    },
  );
});

describe("ldm vae: each bad input is one line", () => {
  const vq = ["--model", file("tiny-vq-f4.safetensors")];
  const path = (name: string) => join(work, name);
  const cases: [string, () => Promise<string[]>, RegExp][] = [
    [
      "a latent of the wrong channels",
      async () => {
        const data = new Float32Array(4 * 8 * 8);
        await writeSafetensors(path("c4.safetensors"), { latent: { dtype: "F32", shape: [1, 4, 8, 8], data } });
        return ["decode", path("c4.safetensors"), ...vq, "--out", path("c4.png")];
      },
      /^ldm: the latent is \[1, 4, 8, 8\] \(256 values\): this first stage decodes \[B, 3, h, w\] \(its embed_dim 3\)/,
    ],
    [
      "a latent of three dimensions",
      async () => {
        const data = new Float32Array(3 * 8 * 8);
        await writeSafetensors(path("r3.safetensors"), { z: { dtype: "F32", shape: [3, 8, 8], data } });
        return ["decode", path("r3.safetensors"), ...vq, "--out", path("r3.png")];
      },
      /^ldm: the latent is \[3, 8, 8\] \(192 values\): this first stage decodes \[B, 3, h, w\]/,
    ],
    [
      "a file of several tensors, none named latent",
      async () => ["decode", file("tiny-vq-f4.dump.safetensors"), ...vq, "--out", path("d.png")],
      /^ldm: latent file .*tiny-vq-f4\.dump\.safetensors: no tensor named "latent" among 6/,
    ],
    [
      "an image whose sides are not multiples of the factor",
      async () => {
        writeFileSync(path("30.png"), encodePng({ width: 30, height: 32, data: new Uint8ClampedArray(30 * 32 * 4) }));
        return ["encode", path("30.png"), ...vq, "--out", path("30.safetensors")];
      },
      /^ldm: the image is 30×32: its sides must be multiples of 4 \(the first stage's factor\)/,
    ],
    [
      "--sample for a VQ first stage",
      async () => {
        writeFileSync(path("32.png"), encodePng({ width: 32, height: 32, data: new Uint8ClampedArray(32 * 32 * 4) }));
        return ["encode", path("32.png"), ...vq, "--sample", "--out", path("s.safetensors")];
      },
      /^ldm: this first stage is a VQModel: it has no posterior to sample$/,
    ],
    [
      "--seed without --sample",
      async () => ["encode", path("30.png"), ...vq, "--seed", "1", "--out", path("s.safetensors")],
      /^ldm: --seed needs --sample/,
    ],
    [
      "--out that is not a safetensors file",
      async () => ["encode", path("30.png"), ...vq, "--out", path("latent.pt")],
      /^ldm: --out .*latent\.pt: the latent is written as safetensors/,
    ],
    [
      "a first stage without its YAML",
      async () => {
        copyFileSync(file("tiny-vq-f4.safetensors"), path("alone.safetensors"));
        return ["decode", path("c4.safetensors"), "--model", path("alone.safetensors"), "--out", path("x.png")];
      },
      /^ldm: .*alone\.safetensors: no YAML given or beside it, and the weights do not say what model this is \(.*\): give the first stage's own YAML/,
    ],
    [
      "--scaled for a first stage saved alone",
      async () => ["encode", path("32.png"), ...vq, "--scaled", "--out", path("s.safetensors")],
      /^ldm: this first stage \(VQModel\) was saved alone: it has no scale_factor/,
    ],
    [
      "a scaled latent decoded without --scaled",
      async () => {
        const data = new Float32Array(3 * 8 * 8);
        const latent = { latent: { dtype: "F32" as const, shape: [1, 3, 8, 8], data } };
        await writeSafetensors(path("scaled.safetensors"), latent, { scale_factor: "0.5" });
        return [
          "decode",
          path("scaled.safetensors"),
          "--model",
          file("tiny-celebahq.safetensors"),
          "--out",
          path("x.png"),
        ];
      },
      /^ldm: latent file .*scaled\.safetensors is scaled by 0\.5 \(ldm vae encode --scaled\): decode it with --scaled/,
    ],
    [
      "a latent scaled by another model's factor",
      async () => [
        "decode",
        path("scaled.safetensors"),
        "--model",
        file("tiny-celebahq.safetensors"),
        "--scaled",
        "--out",
        path("x.png"),
      ],
      /^ldm: latent file .*scaled\.safetensors is scaled by 0\.5, this model's scale_factor is 1:/,
    ],
  ];
  it.each(cases)("%s", async (_, args, message) => {
    const { code, err } = await runCli("vae", ...(await args()));
    expect(code).toBe(1);
    const lines = err.trim().split("\n");
    expect(lines.filter((l) => l.startsWith("ldm: "))).toHaveLength(1);
    expect(lines.pop()).toMatch(message);
  });
});

/**
 * A LatentDiffusion's own first stage (first_stage_model.*, built from its config): unscaled by default, the
 * first stage's own latent; --scaled as upstream's LatentDiffusion: encode = get_first_stage_encoding(
 * encode_first_stage(x)) (KL: a posterior sample after torch.manual_seed, what the loss dumps' x_start is), decode =
 * decode_first_stage(z) (what a sample dump's image is of its z_0).
 */
describe("ldm vae on a LatentDiffusion's checkpoint", () => {
  /** The loss dump's 8-bit image as a PNG; returns its path. */
  async function lossImage(dump: Dump, png: string): Promise<string> {
    const x = await dump.floats("loss", "in", "x");
    writeFileSync(png, encodePng(pixelsToRgba(x.data, x.shape)[0]));
    return png;
  }

  it.each([
    // KL with scale_by_std: the checkpoint's scale_factor buffer, not the YAML's default 1.0; VQ: that default.
    ["tiny-churches", ["--sample", "--seed"], true],
    ["tiny-celebahq", [], false],
  ] as const)("%s: encode --scaled gives upstream's x_start", async (name, sample, stored) => {
    const dump = await Dump.open(file(`${name}.loss.safetensors`));
    try {
      const png = await lossImage(dump, join(work, `${name}-loss.png`));
      const latent = join(work, `${name}-scaled.safetensors`);
      const seed = sample.length ? [...sample, dump.metadata.seed] : [];
      const encode = (out: string, ...flags: string[]) =>
        runCli("vae", "encode", png, "--model", file(`${name}.safetensors`), ...seed, ...flags, "--out", out);
      const run = await encode(latent, "--scaled");
      expect(run.code, run.err).toBe(0);
      const scale = stored ? (await readTensor(file(`${name}.safetensors`), "scale_factor")).data[0] : 1;
      const said = /the LatentDiffusion's scale_factor (\S+)/.exec(run.err)?.[1];
      expect(Number(said)).toBe(scale);
      const [ours, theirs] = await Promise.all([readTensor(latent, "latent"), dump.floats("loss", "in", "x_start")]);
      expect(ours.shape).toEqual(theirs.shape);
      expect(ours.metadata.scale_factor).toBe(said);
      const error = maxRelativeError(ours.data, theirs.data);
      console.log(`${name} scaled latent: ${error.toExponential(2)} of max|ref|`);
      expect(error).toBeLessThan(1e-4);

      // Unscaled (the default): the same first stage's own latent.
      const plain = join(work, `${name}-plain.safetensors`);
      const unscaled = await encode(plain);
      expect(unscaled.code, unscaled.err).toBe(0);
      const raw = await readTensor(plain, "latent");
      expect(raw.metadata).not.toHaveProperty("scale_factor");
      expect(
        maxRelativeError(
          raw.data.map((v) => v * Number(ours.metadata.scale_factor)),
          ours.data,
        ),
      ).toBeLessThan(1e-6);
    } finally {
      await dump.close();
    }
  });

  /** ldm vae decode of `z` on `name`'s checkpoint: each image within one 8-bit level of `x`; returns stderr. */
  async function expectDecodes(name: string, z: HostTensor, x: HostTensor, flags: string[]): Promise<string> {
    const latent = join(work, `${name}-decode.safetensors`);
    await writeSafetensors(latent, { latent: { dtype: "F32", shape: z.shape, data: z.data } });
    const out = join(work, `${name}-decode.png`);
    const run = await runCli("vae", "decode", latent, "--model", file(`${name}.safetensors`), ...flags, "--out", out);
    expect(run.code, run.err).toBe(0);
    pixelsToRgba(x.data, x.shape).forEach((expected, i) => {
      const written = decodePng(readFileSync(out.replace(/\.png$/, `-${i}.png`)), "decoded");
      const off = Math.max(...written.data.map((v, p) => Math.abs(v - expected.data[p])));
      console.log(`${name} ${flags.join(" ")} image ${i}: max ${off} level(s) off`);
      expect(off).toBeLessThanOrEqual(1);
    });
    return run.err;
  }

  // KL with the stored scale of scale_by_std; KL with the YAML's scale_factor 0.18215 (Stable Diffusion 1.x).
  it.each(["tiny-churches", "tiny-sd1"])(
    "%s: decode --scaled of a sample's z_0 gives upstream's decode_first_stage image",
    async (name) => {
      const dump = await Dump.open(file(`${name}.sample-ddim.safetensors`));
      try {
        const [z0, image] = await Promise.all([
          dump.floats("sample", "out", "z_0"),
          dump.floats("sample", "out", "image"),
        ]);
        await expectDecodes(name, z0, image, ["--scaled"]);
      } finally {
        await dump.close();
      }
    },
  );

  it("ldm info says the latent scale --scaled applies and where it comes from", async () => {
    const churches = await runCli("info", file("tiny-churches.safetensors"));
    expect(churches.code, churches.err).toBe(0);
    expect(churches.out).toMatch(
      /^latent scale: 0\.70709\d* \(the checkpoint's scale_factor buffer \(scale_by_std\)\)$/m,
    );
    const sd1 = await runCli("info", file("tiny-sd1.safetensors"), "--json");
    expect(sd1.code, sd1.err).toBe(0);
    expect(JSON.parse(sd1.out).latentScale).toEqual({ value: 0.18215, from: "the config's scale_factor" });
    const alone = await runCli("info", file("tiny-vq-f4.safetensors"));
    expect(alone.out).not.toMatch(/latent scale/);
  });

  it("tiny-celebahq: decode without --scaled is the VQ first stage's own decode (quantized first)", async () => {
    const dump = await Dump.open(file("tiny-celebahq.dump.safetensors"));
    try {
      const [z, x] = await Promise.all([dump.floats("vae.decode", "in", "z"), dump.floats("vae.decode", "out", "x")]);
      const err = await expectDecodes("tiny-celebahq", z, x, []);
      expect(err).toMatch(
        /first stage: VQModelInterface, latent 3 channels, factor 4, the LatentDiffusion's scale_factor 1$/m,
      );
    } finally {
      await dump.close();
    }
  });
});

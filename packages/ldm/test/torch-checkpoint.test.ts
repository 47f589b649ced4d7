import { createHash } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { type Checkpoint, openCheckpoint, openSafetensors } from "@ldm/weights/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AutoencoderKL } from "../src/models/autoencoder.ts";
import { loadModel } from "../src/models/load-node.ts";
import { loadModelFromBlob } from "../src/models/load-stream.ts";
import { companionFiles } from "../src/pipeline/model-files.ts";
import { validate } from "../src/validate/index.ts";
import { runCli } from "./helpers/run-cli.ts";

/**
 * tiny-sd1.ckpt is tiny-sd1.safetensors as the paper's checkpoints store their weights:
 * torch.save({"state_dict": sd, "global_step": 1000}) by Debian's PyTorch (reference/make_torch_fixtures.py).
 */
const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
const CKPT = join(DUMPS, "tiny-sd1.ckpt");
const SAFETENSORS = join(DUMPS, "tiny-sd1.safetensors");
const CONFIG = join(DUMPS, "tiny-sd1.yaml");

const device = await useDevice();
let scratch: string;
beforeAll(async () => {
  scratch = mkdtempSync(join(tmpdir(), "ldm-ckpt-"));
});
afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

/** Each canonical key's dtype, shape and a hash of its stored bytes. */
async function canonicalTensors(checkpoint: Checkpoint): Promise<string[]> {
  const out: string[] = [];
  for (const key of [...checkpoint.source.keys()].sort()) {
    const m = checkpoint.source.mapping(key)!;
    const { dtype, shape } = checkpoint.source.describe(key)!;
    const hash = createHash("sha256")
      .update(await m.file.readBytes(m.stored))
      .digest("hex");
    out.push(`${key} ${dtype} ${shape.join("x")} ${hash}`);
  }
  return out;
}

describe("the paper's .ckpt layout of tiny-sd1", () => {
  it("opens as its safetensors does: same canonical tensors, bytes, schedule, ignored keys, detection", async () => {
    const [ckpt, st] = [await openCheckpoint(CKPT), await openCheckpoint(SAFETENSORS)];
    try {
      expect(await canonicalTensors(ckpt)).toEqual(await canonicalTensors(st));
      expect(ckpt.scheduleKeys.toSorted()).toEqual(st.scheduleKeys.toSorted());
      expect(await ckpt.readSchedule()).toEqual(await st.readSchedule());
      expect(ckpt.ignored.map((i) => i.key).sort()).toEqual(st.ignored.map((i) => i.key).sort());
      expect(ckpt.config()).toEqual(st.config());
    } finally {
      await ckpt.close();
      await st.close();
    }
  });

  it("validates exactly as its safetensors does (f32)", async () => {
    const dump = join(DUMPS, "tiny-sd1.dump.safetensors");
    const fromCkpt = await validate({ checkpoint: CKPT, config: CONFIG, dump, device });
    const fromSafetensors = await validate({ checkpoint: SAFETENSORS, config: CONFIG, dump, device });
    expect(fromCkpt.pass).toBe(true);
    expect(fromCkpt.checks).toEqual(fromSafetensors.checks);
  });

  it("finds the YAML config beside a .ckpt, as beside a .safetensors (model.ckpt → model.yaml)", () => {
    const model = join(scratch, "model.ckpt");
    copyFileSync(CKPT, model);
    copyFileSync(CONFIG, join(scratch, "model.yaml"));
    expect(companionFiles(model).config).toBe(join(scratch, "model.yaml"));
  });

  it("loadModelFromBlob (a browser File) builds from the .ckpt what loadModel builds from the .safetensors", async () => {
    const yaml = { text: readFileSync(CONFIG, "utf8"), origin: CONFIG };
    const fromFile = await loadModel(SAFETENSORS, { device, config: CONFIG, components: ["vae"] });
    let read = 0;
    const blob = new Blob([readFileSync(CKPT)]);
    const fromBlob = await loadModelFromBlob(blob, {
      device,
      origin: "tiny-sd1.ckpt",
      config: yaml,
      components: ["vae"],
      onBytes: (n) => (read = n),
    });
    const z = Tensor.from(
      device,
      Float32Array.from({ length: 60 }, (_, i) => Math.sin(i)),
      [1, 4, 3, 5],
    );
    const decoded = await Promise.all([fromFile, fromBlob].map((m) => (m.vae as AutoencoderKL).decode(z).toFloat32()));
    expect(Array.from(decoded[1])).toEqual(Array.from(decoded[0]));
    // The VAE's tensors only, not the whole file.
    expect(read).toBeGreaterThan(0);
    expect(read).toBeLessThan(blob.size / 2);
    fromFile.dispose();
    fromBlob.dispose();
  });

  it("ldm info names the PyTorch checkpoint and its global_step", async () => {
    const { code, out } = await runCli("info", CKPT);
    expect(code).toBe(0);
    expect(out).toContain("family: SD 1.x");
    expect(out).toContain("PyTorch checkpoint: format pytorch-zip, state_dict state_dict, global_step 1000");
  });

  it("ldm convert round-trips: the .safetensors it writes holds the original tensors, byte for byte", async () => {
    const out = join(scratch, "tiny-sd1.safetensors");
    const run = await runCli("convert", CKPT, out);
    expect(run.code, run.err).toBe(0);
    expect(run.out).toMatch(/tiny-sd1\.safetensors: 449 tensors, \d+\.\d MiB/);
    const [converted, original] = [await openSafetensors(out), await openSafetensors(SAFETENSORS)];
    try {
      expect([...converted.tensors.keys()].sort()).toEqual([...original.tensors.keys()].sort());
      for (const [name, entry] of original.tensors) {
        expect(converted.entry(name).dtype).toBe(entry.dtype);
        expect(converted.entry(name).shape).toEqual(entry.shape);
        expect(Buffer.from(await converted.readBytes(name)).equals(await original.readBytes(name)), name).toBe(true);
      }
      expect(converted.metadata).toEqual({ format: "pt", global_step: "1000" });
    } finally {
      await converted.close();
      await original.close();
    }
  });

  it("ldm convert refuses a hostile checkpoint in one line and writes nothing", async () => {
    const hostile = fileURLToPath(
      new URL("../../weights/test/fixtures/torch/hostile/posix-system.pt", import.meta.url),
    );
    const out = join(scratch, "hostile.safetensors");
    const run = await runCli("convert", hostile, out);
    expect(run.code).toBe(1);
    expect(run.err).toMatch(/^ldm: .*posix-system\.pt .*refused global posix\.system/);
    await expect(openSafetensors(out)).rejects.toThrow(/cannot read: ENOENT/);
  });
});

import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { useDevice } from "@ldm/tensor/testing";
import type { TensorToWrite } from "@ldm/weights";
import { openSafetensors, writeSafetensors } from "@ldm/weights/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ValidationReport, validate } from "../src/validate/index.ts";
import { runCli } from "./helpers/run-cli.ts";

// The committed tiny checkpoints, configs and dumps of reference/make_dumps.py (see fixtures/dumps/README.md).
const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
const files = (name: string) => ({
  checkpoint: join(DUMPS, `${name}.safetensors`),
  config: join(DUMPS, `${name}.yaml`),
  dump: join(DUMPS, `${name}.dump.safetensors`),
});

const device = await useDevice();
let scratch: string;
beforeAll(async () => {
  scratch = mkdtempSync(join(tmpdir(), "ldm-validate-"));
});
afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

function summary(report: ValidationReport): string {
  return report.checks
    .map((c) => `${report.dtype} ${c.key}: max abs ${c.maxAbs.toExponential(2)}, rel ${c.relative.toExponential(2)}`)
    .join("\n");
}

const COMPONENT_OUTPUTS = [
  "vae.encode.out.moments",
  "vae.decode.out.x",
  "unet.out.eps",
  "clip.out.last_hidden_state",
  "clip.out.penultimate_hidden_state",
];

describe.each(["tiny-sd1", "tiny-sd2", "tiny-inpaint"])("%s", (name) => {
  // Tolerances: DEFAULT_TOLERANCE in src/validate/index.ts states and justifies them (f32 1e-4, f16 2e-2 of max|ref|).
  it.each(["f32", "f16"] as const)("every component matches PyTorch in %s", async (dtype) => {
    const report = await validate({ ...files(name), f16: dtype === "f16", device });
    console.log(summary(report));
    expect(report.checks.map((c) => c.key).sort()).toEqual([...COMPONENT_OUTPUTS].sort());
    for (const check of report.checks) {
      expect(check.nonFinite, check.key).toBe(0);
      expect(check.pass, `${check.key}: ${check.relative}`).toBe(true);
    }
    expect(report.skipped).toEqual([]);
  });
});

type Entry = [name: string, tensor: TensorToWrite];

/** Copies a safetensors file with tensors renamed, replaced or dropped (`change` returns null), plus `extra` ones. */
async function rewrite(
  from: string,
  to: string,
  change: (name: string, t: TensorToWrite) => Entry | null,
  extra: Record<string, TensorToWrite> = {},
): Promise<string> {
  const file = await openSafetensors(from);
  const out: Record<string, TensorToWrite> = {};
  for (const [name, entry] of file.tensors) {
    const changed = change(name, { dtype: entry.dtype, shape: entry.shape, data: await file.readBytes(name) });
    if (changed) out[changed[0]] = changed[1];
  }
  await file.close();
  await writeSafetensors(to, { ...out, ...extra }, file.metadata);
  return to;
}

describe("wrong files", () => {
  it("names every missing and mis-shaped key of a checkpoint that does not fit the config", async () => {
    const checkpoint = join(scratch, "broken.safetensors");
    await rewrite(files("tiny-sd1").checkpoint, checkpoint, (name, t) => {
      if (name === "first_stage_model.decoder.conv_in.bias" || name === "model.diffusion_model.out.2.bias") return null;
      if (name === "model.diffusion_model.time_embed.0.bias") {
        const bytes = t.data as Uint8Array;
        return [name, { ...t, shape: [t.shape[0] / 2], data: bytes.subarray(0, bytes.byteLength / 2) }];
      }
      return [name, t];
    });
    const error = await validate({ ...files("tiny-sd1"), checkpoint, device }).then(
      () => "no error",
      (e: Error) => e.message,
    );
    expect(error).toMatch(/do not fit the model \(2 missing, 0 unexpected, 1 mis-shaped\)/);
    expect(error).toContain("missing: first_stage_model.decoder.conv_in.bias (expected shape [32])");
    expect(error).toContain("missing: model.diffusion_model.out.2.bias");
    expect(error).toContain(
      "wrong shape: model.diffusion_model.time_embed.0.bias is [64] in the checkpoint, the model needs [128]",
    );
  });

  it("rejects a dump without any known component, saying what it found and what it expects", async () => {
    const renamed = await rewrite(files("tiny-sd1").dump, join(scratch, "unknown.safetensors"), (name, t) =>
      name.startsWith("unet.") ? [name.replace(/^unet\./, "unet2."), t] : null,
    );
    const error = await validate({ ...files("tiny-sd1"), dump: renamed, device }).then(
      () => "no error",
      (e: Error) => e.message,
    );
    expect(error).toContain("no known components in the dump (found: unet2)");
    expect(error).toContain("vae.encode, vae.decode, unet, clip, sample");
  });

  it("names a missing input of a component", async () => {
    const dump = join(scratch, "no-context.safetensors");
    await rewrite(files("tiny-sd1").dump, dump, (name, t) => (name === "unet.in.context" ? null : [name, t]));
    const error = await validate({ ...files("tiny-sd1"), dump, device }).then(
      () => "no error",
      (e: Error) => e.message,
    );
    expect(error).toContain('component unet has no input "unet.in.context"');
  });

  it("refuses a component with inputs and no outputs (it would be silently unchecked)", async () => {
    const dump = join(scratch, "no-eps.safetensors");
    await rewrite(files("tiny-sd1").dump, dump, (name, t) => (name === "unet.out.eps" ? null : [name, t]));
    const error = await validate({ ...files("tiny-sd1"), dump, device }).then(
      () => "no error",
      (e: Error) => e.message,
    );
    expect(error).toContain("component unet has inputs (");
    expect(error).toContain("but no outputs (unet.out.<name>): nothing of it would be checked");
  });

  it("names a missing input of a component whose outputs are present (sample without uncond_ids)", async () => {
    const dump = join(scratch, "no-uncond.safetensors");
    const sample = join(DUMPS, "tiny-sd1.sample-ddim.safetensors");
    await rewrite(sample, dump, (name, t) => (name === "sample.in.uncond_ids" ? null : [name, t]));
    const error = await validate({ ...files("tiny-sd1"), dump, device }).then(
      () => "no error",
      (e: Error) => e.message,
    );
    expect(error).toContain('component sample has no input "sample.in.uncond_ids"');
  });

  it("fails an output that does not match, and one the model does not produce", async () => {
    const dump = await perturbedClipDump();
    const report = await validate({ ...files("tiny-sd1"), dump, device });
    const byKey = new Map(report.checks.map((c) => [c.key, c]));
    expect(byKey.get("clip.out.last_hidden_state")?.pass).toBe(false);
    expect(byKey.get("clip.out.last_hidden_state")?.relative).toBeGreaterThan(5e-3);
    expect(byKey.get("clip.out.penultimate_hidden_state")?.pass).toBe(true);
    expect(byKey.get("clip.out.pooled_output")?.problem).toContain("not produced");
    expect(report.pass).toBe(false);
  });
});

/** tiny-sd1's clip component with last_hidden_state moved by 1% of its range at one element, plus an output we do not compute. */
async function perturbedClipDump(): Promise<string> {
  const pooled: TensorToWrite = { dtype: "F32", shape: [2, 32], data: new Float32Array(64) };
  return rewrite(
    files("tiny-sd1").dump,
    join(scratch, "perturbed.safetensors"),
    (name, t) => {
      if (name !== "clip.out.last_hidden_state") return name.startsWith("clip.") ? [name, t] : null;
      const values = new Float32Array((t.data as Uint8Array).slice().buffer);
      values[5] += 1e-2 * values.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      return [name, { ...t, data: values }];
    },
    { "clip.out.pooled_output": pooled },
  );
}

/** `ldm validate` of a fixture checkpoint with its own config (or `config`) against `dump`. */
function validateCli(name: string, dump: string, config = files(name).config) {
  return runCli("validate", "--checkpoint", files(name).checkpoint, "--config", config, "--dump", dump);
}

describe("ldm validate", () => {
  it("prints each output's errors and PASS, exit code 0", async () => {
    const f = files("tiny-sd2");
    const dump = await rewrite(f.dump, join(scratch, "clip-only.safetensors"), (name, t) =>
      name.startsWith("clip.") ? [name, t] : null,
    );
    const { code, out } = await validateCli("tiny-sd2", dump);
    expect(code).toBe(0);
    expect(out).toMatch(
      /clip\.out\.last_hidden_state\s+max abs err \S+ {2}max\|ref\| \S+ {2}rel \S+ {2}\(bound \S+\) {2}PASS/,
    );
    expect(out).toContain("all 2 outputs passed");
  });

  // Every sample dump is checked against its tolerance in pipeline.test.ts (the same sampleFromTokens path);
  // this one checks validate's sample component end to end: metadata, c_concat, decoding and the report.
  it("checks a sample dump's z_0, and its image as our decoder on the dump's z_0 (tiny-inpaint ddim: with c_concat)", async () => {
    const dump = join(DUMPS, "tiny-inpaint.sample-ddim.safetensors");
    const { code, out, err } = await validateCli("tiny-inpaint", dump);
    expect(code, err).toBe(0);
    expect(out).toMatch(/sample\.out\.z_0\s+max abs err .* PASS$/m);
    expect(out).toMatch(/sample\.out\.image\s+max abs err .* PASS {2}\(our decoder on the dump's z_0\)$/m);
    expect(out).toContain("all 2 outputs passed");

    // A dump with the image alone: the image is then ours from end to end.
    const imageOnly = await rewrite(dump, join(scratch, "image-only.safetensors"), (name, t) =>
      name === "sample.out.z_0" ? null : [name, t],
    );
    const endToEnd = await validateCli("tiny-inpaint", imageOnly);
    expect(endToEnd.code, endToEnd.err).toBe(0);
    expect(endToEnd.out).toMatch(/sample\.out\.image\s+max abs err .* PASS$/m);
    expect(endToEnd.out).toContain("all 1 outputs passed");
  });

  it("exits 1 on a failing output, and on a checkpoint that does not fit, listing the keys", async () => {
    const failing = await validateCli("tiny-sd1", await perturbedClipDump());
    expect(failing.code).toBe(1);
    expect(failing.out).toMatch(/clip\.out\.last_hidden_state .* FAIL/);
    expect(failing.out).toMatch(/clip\.out\.pooled_output +FAIL {2}not produced/);
    expect(failing.err).toContain("2 of 3 outputs failed");

    const wrongConfig = await validateCli("tiny-sd1", files("tiny-sd1").dump, files("tiny-sd2").config);
    expect(wrongConfig.code).toBe(1);
    expect(wrongConfig.err).toMatch(/do not fit the model/);
    expect(wrongConfig.err).toMatch(/wrong shape: model\.diffusion_model\./);
  });

  it("takes the config beside the checkpoint when no --config is given, as ldm generate does", async () => {
    const f = files("tiny-sd1");
    const dump = await rewrite(f.dump, join(scratch, "unet-only.safetensors"), (name, t) =>
      name.startsWith("unet.") ? [name, t] : null,
    );
    const beside = await runCli("validate", "--checkpoint", f.checkpoint, "--dump", dump);
    expect(beside.code, beside.err).toBe(0);
    expect(beside.out).toContain(`config: ${f.config} (beside the checkpoint)`);
    expect(beside.out).toMatch(/unet\.out\.eps .* PASS/);
  });

  it("says what detection assumed when there is no config (tiny-sd1 has 4 heads, detection assumes SD 1.x's 8)", async () => {
    const f = files("tiny-sd1");
    const alone = join(scratch, "alone", "tiny-sd1.safetensors");
    mkdirSync(dirname(alone), { recursive: true });
    copyFileSync(f.checkpoint, alone);
    const dump = await rewrite(f.dump, join(scratch, "unet-only.safetensors"), (name, t) =>
      name.startsWith("unet.") ? [name, t] : null,
    );
    const { code, out } = await runCli("validate", "--checkpoint", alone, "--dump", dump);
    expect(code).toBe(1);
    expect(out).toContain(
      "config detected from the weights (pass --config to set it), assuming: UNet num_heads 8 (SD 1.x)",
    );
    expect(out).toMatch(/unet\.out\.eps .* FAIL/);
  });

  it("names a dump that is not a safetensors file", async () => {
    const notSafetensors = files("tiny-sd1").config;
    const { code, err } = await validateCli("tiny-sd1", notSafetensors);
    expect(code).toBe(1);
    expect(err).toContain(`${notSafetensors}: not a safetensors file`);
  });

  it("rejects a bad tolerance flag", async () => {
    const f = files("tiny-sd1");
    const { code, err } = await runCli("validate", "--checkpoint", f.checkpoint, "--dump", f.dump, "--atol", "-1");
    expect(code).toBe(1);
    expect(err).toContain("--atol must be a non-negative number");
  });
});

/**
 * Bad and extreme input, as a new user tries it: every case ends in one clear line on stderr and exit code 1,
 * or a correct result; never a crash, a hang or a silent wrong result. Cases run in-process (runCli) unless the
 * process itself is what is tested; those are spawned with a time limit, so a hang fails instead of stalling.
 * (The malformed-file corpus of the safetensors reader is in @ldm/weights' safetensors.test.ts.)
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DawnLineFilter } from "../src/cli/dawn-stderr.ts";
import { runCli } from "./helpers/run-cli.ts";
import { spawnCli } from "./helpers/spawn-cli.ts";

const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
/** The tiny checkpoint without a vocabulary: had the model loaded, the tokenizer would be the error. */
const MODEL = ["--model", join(DUMPS, "tiny-sd1.safetensors"), "--config", join(DUMPS, "tiny-sd1.yaml")];

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "ldm-bad-input-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** One line on stderr, exit code 1. */
function expectOneLineError(run: { code: number | null; err: string }, message: RegExp): void {
  expect(run.err).toMatch(message);
  expect(run.err.trim().split("\n"), run.err).toHaveLength(1);
  expect(run.code).toBe(1);
}

describe("--out and --grid: decided before the model loads", () => {
  it("a name with another image extension is refused (only PNG is written), and nothing is made", async () => {
    for (const name of ["new.jpg", "new.JPEG", "new.webp"]) {
      const run = await runCli("generate", "a cat", ...MODEL, "--out", join(dir, name));
      expectOneLineError(
        run,
        new RegExp(`--out .*${name.replace(".", "\\.")}: only PNG is written; name a \\.png file`),
      );
      expect(existsSync(join(dir, name))).toBe(false);
    }
  });

  it("a folder named x.png where the file must go", async () => {
    mkdirSync(join(dir, "x.png"));
    const run = await runCli("generate", "a cat", ...MODEL, "--out", join(dir, "x.png"));
    expectOneLineError(run, /--out .*x\.png is a folder: a name ending in \.png is written as a file/);
    const grid = await runCli("generate", "a cat", ...MODEL, "--grid", join(dir, "x.png"));
    expectOneLineError(grid, /--grid .*x\.png is a folder/);
  });

  it("a file on the way is named", async () => {
    writeFileSync(join(dir, "a-file"), "");
    const run = await runCli("generate", "a cat", ...MODEL, "--out", join(dir, "a-file", "sub", "cat.png"));
    expectOneLineError(run, /cannot write into folder .*a-file\/sub \(.*a-file is not a folder\)/);
  });

  it("a new folder is made, and no probe file is left in it", async () => {
    // The model then fails on its vocabulary: the folder was made and checked first.
    const out = join(dir, "new", "deeper");
    const run = await runCli("generate", "a cat", ...MODEL, "--out", out);
    expect(run.code).toBe(1);
    expect(statSync(out).isDirectory()).toBe(true);
    expect(readdirSync(out)).toEqual([]);
  });

  it.skipIf(process.platform !== "linux")("under /proc and /sys: an error at once, no endless loop", async () => {
    // Node 20's recursive mkdirSync retries ENOENT under /proc forever: a process, so a hang can be killed.
    for (const out of ["/proc/ldm-x", "/proc/ldm-x/y.png", "/sys/ldm-x.png"]) {
      const run = await spawnCli(["generate", "a cat", ...MODEL, "--out", out], { timeoutMs: 20_000 });
      expect(run.timedOut, out).toBe(false);
      expectOneLineError(run, new RegExp(`--out ${out}: cannot write into folder`));
    }
  });
});

describe("stderr: one line per error", () => {
  it("Dawn's own warnings are dropped from whole lines only; partial lines and progress pass at once", () => {
    const written: string[] = [];
    const filter = new DawnLineFilter((t) => written.push(t));
    filter.push("Warn");
    expect(written).toEqual([]);
    filter.push("ing: maxDynamicUniformBuffersPerPipelineLayout artificially reduced from 1000000 to 16\nsampl");
    filter.push("ing 3/50\r");
    filter.push("ldm: an error\nWarning: max");
    filter.end();
    expect(written.join("")).toBe("sampling 3/50\rldm: an error\n");
  });

  it("an error after the GPU starts is one line on stderr, exit code 1 (Dawn's warnings only with --verbose)", async () => {
    const args = ["generate", "a cat", ...MODEL, "--out", dir];
    const run = await spawnCli(args, { timeoutMs: 60_000 });
    expectOneLineError(
      run,
      /^ldm: the tokenizer's start\/end ids .* are outside the text encoder's vocabulary of 1000/,
    );
    const verbose = await spawnCli(["--verbose", ...args], { timeoutMs: 60_000 });
    expect(verbose.code).toBe(1);
    expect(verbose.err.split("\n").length).toBeGreaterThan(2);
  });
});

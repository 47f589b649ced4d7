/**
 * The built-in model, seconds from command to PNG: `pnpm bench:builtin [--model file] [--steps N] [--repeats N] [--out file]`.
 *
 * Times `ldm generate "red apple" --model … --width 64 --height 64 --seed 42 --out …` as a child process (wall
 * clock: start-up, model load, kernel compiles on a cold cache, 50 DDIM steps, decode, PNG), and its peer,
 * reference/bench_builtin.py (our PyTorch reference on the same checkpoint, the same sampler and defaults), as
 * a child process too. The two run one after the other, never together. Median of --repeats runs each; the
 * first of ours may include compiling the kernels when Mesa's shader cache is cold, which is reported.
 * The row merges into the results file (benchmarks/results.json by default).
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Device } from "@ldm/tensor";
import { Command } from "commander";
import { median, positiveInt, requirePythonPeer } from "./common.ts";
import { makeRow, writeResults } from "./results.ts";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const BUILT_IN = join(root, "packages/ldm/models/emoji-ldm/emoji-ldm.safetensors");
const PROMPT = "red apple";
const SIZE = 64;
const SEED = 42;

/** Wall-clock ms of a child process; its stderr passes through, so a failure explains itself. */
function wallMs(command: string, args: string[]): number {
  const start = performance.now();
  try {
    execFileSync(command, args, { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
  } catch {
    throw new Error(`\`${command} ${args.join(" ")}\` failed: its error is above`);
  }
  return performance.now() - start;
}

const program = new Command()
  .option(
    "--model <file>",
    "checkpoint .safetensors with its .yaml and tokenizer/ beside it (default: the built-in model)",
  )
  .option("--steps <n>", "DDIM steps (default 50, as `ldm generate`)", positiveInt, 50)
  .option("--repeats <n>", "runs of each command, median reported", positiveInt, 1)
  .option("--threads <n>", "torch CPU threads for the peer", positiveInt, 2)
  .option("--out <file>", "results file the row merges into", join(here, "results.json"));
program.parse();
const opts = program.opts<{ model?: string; steps: number; repeats: number; threads: number; out: string }>();
requirePythonPeer("the peer, reference/bench_builtin.py,");
const cwd = process.env.INIT_CWD ?? process.cwd();
const model = opts.model ? resolve(cwd, opts.model) : BUILT_IN;
const stem = model.replace(/\.safetensors$/, "");
for (const path of [model, `${stem}.yaml`, join(dirname(model), "tokenizer")]) {
  if (!existsSync(path)) {
    console.error(
      `${path} does not exist: --model needs a .safetensors with its .yaml and tokenizer/ folder beside it`,
    );
    process.exit(1);
  }
}

const scratch = mkdtempSync(join(tmpdir(), "ldm-bench-builtin-"));
const common = [
  "--width",
  String(SIZE),
  "--height",
  String(SIZE),
  "--seed",
  String(SEED),
  "--steps",
  String(opts.steps),
];
const ours = [
  join(root, "packages/ldm/bin/ldm.mjs"),
  "generate",
  PROMPT,
  "--model",
  model,
  "--vocab",
  join(dirname(model), "tokenizer"),
  ...common,
  "--out",
  join(scratch, "ours.png"),
];
const peer = [
  join(root, "reference/bench_builtin.py"),
  PROMPT,
  "--model",
  stem,
  ...common,
  "--threads",
  String(opts.threads),
  "--out",
  join(scratch, "peer.png"),
];
const command = `ldm generate "${PROMPT}" --model ${model} --width ${SIZE} --height ${SIZE} --seed ${SEED} --steps ${opts.steps}`;
console.log(command);
try {
  const oursMs: number[] = [];
  const peerMs: number[] = [];
  for (let r = 0; r < opts.repeats; r++) {
    oursMs.push(wallMs(process.execPath, ours));
    peerMs.push(wallMs("/usr/bin/python3", peer));
    console.log(`run ${r + 1}: ours ${(oursMs[r] / 1000).toFixed(1)} s, torch ${(peerMs[r] / 1000).toFixed(1)} s`);
  }
  const which = model === BUILT_IN ? "built-in model" : model;
  const name = `${which}: command to PNG, ${SIZE}×${SIZE}, ${opts.steps} DDIM steps (f32)`;
  const row = makeRow({
    name,
    oursMs: median(oursMs),
    peer: `torch ${execFileSync("/usr/bin/python3", ["-c", "import torch; print(torch.__version__)"], { encoding: "utf8" }).trim()} CPU, ${opts.threads} threads (reference/bench_builtin.py)`,
    peerMs: median(peerMs),
  });
  const file = resolve(cwd, opts.out);
  // `ldm generate` runs on the default adapter, the one Device.create() gets here.
  const probe = await Device.create();
  writeResults(file, [row], probe.describe());
  probe.destroy();
  console.log(`${name}: ours ${row.ours_ms} ms, torch ${row.peer_ms} ms, ratio ${row.ratio}×\nwrote 1 row to ${file}`);
} catch (e) {
  console.error((e as Error).message);
  process.exitCode = 1;
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
process.exit();

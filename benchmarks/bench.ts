/**
 * Every benchmark in one command: `pnpm bench [--only kernels,e2e,builtin,memory] [--quick] [--out file] [--no-peer]`.
 *
 * - kernels: the kernel table against tfjs-backend-webgpu (benchmarks/kernels.ts);
 * - e2e: SD 1.5's UNet (batch 2), VAE decode and CLIP against PyTorch CPU (benchmarks/e2e.ts) on the random-weight
 *   SD 1.5 checkpoint of reference/full_size.py;
 * - builtin: the built-in model's seconds from command to PNG against PyTorch (benchmarks/builtin.ts);
 * - memory: peak GPU bytes of SD 1.5's UNet and VAE with and without sequential CFG and VAE tiling (benchmarks/memory.ts).
 *
 * Each part runs in its own process, one after the other (a fresh device each; never two benchmarks sharing the
 * cores), and merges its rows into the results file: benchmarks/results.json, or with --quick (small shapes, a
 * smoke test of the benchmarks rather than a measurement) a file in the temporary folder unless --out names one.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, InvalidArgumentError } from "commander";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const PARTS = ["kernels", "e2e", "builtin", "memory"] as const;
type Part = (typeof PARTS)[number];
const SD15_RANDOM = join(root, "reference/out/sd15-random/sd15-random.safetensors");
/** --quick's end-to-end model: small, with the SD layout and a YAML config. */
const QUICK_E2E_MODEL = join(root, "packages/ldm/models/emoji-ldm/emoji-ldm.safetensors");

function parts(value: string): Part[] {
  const list = value.split(",").map((p) => p.trim());
  const unknown = list.filter((p) => !(PARTS as readonly string[]).includes(p));
  if (unknown.length) throw new InvalidArgumentError(`unknown part ${unknown.join(", ")}; parts: ${PARTS.join(", ")}`);
  return list as Part[];
}

const program = new Command()
  .description("run the benchmarks and write their rows to one results file")
  .option("--only <parts>", `comma-separated subset of ${PARTS.join(", ")}`, parts, [...PARTS])
  .option("--quick", "small sizes and few steps: checks that every benchmark runs, in a few minutes")
  .option("--out <file>", "results file (default benchmarks/results.json; with --quick, one in the temporary folder)")
  .option("--no-peer", "kernels without the tfjs peer");
program.parse();
const opts = program.opts<{ only: Part[]; quick?: boolean; out?: string; peer: boolean }>();
const cwd = process.env.INIT_CWD ?? process.cwd();
const out = opts.out
  ? resolve(cwd, opts.out)
  : opts.quick
    ? join(tmpdir(), "ldm-bench-quick.json")
    : join(here, "results.json");

function partArgs(part: Part): string[] {
  const quick = opts.quick ?? false;
  switch (part) {
    case "kernels":
      return ["kernels.ts", ...(quick ? ["--quick"] : []), ...(opts.peer ? [] : ["--no-peer"])];
    case "e2e":
      return quick
        ? ["e2e.ts", QUICK_E2E_MODEL, "--latent", "8", "--repeats", "1"]
        : ["e2e.ts", SD15_RANDOM, "--latent", "16", "--repeats", "2"];
    case "builtin":
      return ["builtin.ts", ...(quick ? ["--steps", "2"] : [])];
    case "memory":
      return ["memory.ts", "--latent", quick ? "8" : "32"];
  }
}

const failed: Part[] = [];
for (const part of opts.only) {
  const args = [...partArgs(part), "--out", out];
  console.log(`\n== ${part}: ${args.join(" ")}`);
  if (part === "e2e" && !existsSync(args[1])) {
    console.error(
      `${args[1]} does not exist: make it with \`pnpm setup:bench && /usr/bin/python3 reference/full_size.py\` (or skip e2e with --only)`,
    );
    failed.push(part);
    continue;
  }
  const start = performance.now();
  const run = spawnSync(process.execPath, ["--import", "tsx", ...args], { cwd: here, stdio: "inherit" });
  console.log(
    `== ${part}: ${run.status === 0 ? "done" : "FAILED"} in ${((performance.now() - start) / 1000).toFixed(0)} s`,
  );
  if (run.status !== 0) failed.push(part);
}
console.log(`\nresults: ${out}`);
if (failed.length) {
  console.error(`failed: ${failed.join(", ")}`);
  process.exit(1);
}

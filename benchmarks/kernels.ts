/**
 * Kernel microbenchmarks: `pnpm bench:kernels [name filters…] [--no-peer] [--quick] [--out file]`.
 *
 * Imports every benchmarks/kernels-*.ts (each registers its rows: GEMM, group norm, attention), runs them
 * against tfjs-backend-webgpu on the same adapter, prints a Markdown table and merges the rows into the
 * results file (benchmarks/results.json by default). Benchmarks are not tests: nothing here asserts a time.
 */
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Device } from "@ldm/tensor";
import { Command } from "commander";
import { loadPeer, registerKernelRows, runBenches, TABLE_HEADER, toResultRow } from "./harness.ts";
import { writeResults } from "./results.ts";

const here = dirname(fileURLToPath(import.meta.url));

const program = new Command()
  .argument("[filters...]", "only rows whose name contains one of these")
  .option("--no-peer", "skip the tfjs-backend-webgpu peer")
  .option("--quick", "small shapes: a smoke test of the benchmark, not a measurement")
  .option("--out <file>", "results file the rows merge into", join(here, "results.json"));
program.parse();
const { peer, quick, out } = program.opts<{ peer: boolean; quick?: boolean; out: string }>();
await registerKernelRows(quick ?? false);

const device = await Device.create();
const tf = peer ? await loadPeer(device) : null;
console.log(`adapter: ${device.describe()}`);
console.log(`date: ${new Date().toISOString()}, node ${process.version}`);
console.log(TABLE_HEADER);
const results = await runBenches(device, tf, { filter: program.args });
const file = resolve(process.env.INIT_CWD ?? process.cwd(), out);
writeResults(file, results.map(toResultRow), device.describe());
console.log(`wrote ${results.length} rows to ${file}`);
device.destroy();
process.exit(0);

#!/usr/bin/env node
// Runs the TypeScript CLI (src/cli/bin.ts) directly with tsx, so `pnpm ldm …` needs no build step. The relaunch
// that filters Dawn's stderr is plain JavaScript and runs first: the launching process never loads tsx.
import { runWithoutDawnWarnings } from "../src/cli/dawn-stderr.js";

const relaunched = await runWithoutDawnWarnings(process.argv);
if (relaunched !== undefined) {
  process.exitCode = relaunched;
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import("../src/cli/bin.ts");
}

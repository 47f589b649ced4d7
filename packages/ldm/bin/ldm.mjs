#!/usr/bin/env node
// Runs the TypeScript CLI directly (tsx), so `pnpm ldm …` needs no build step.
import { register } from "tsx/esm/api";

register();
process.env.XDG_RUNTIME_DIR ??= "/tmp";
const { runWithoutDawnWarnings } = await import("../src/cli/dawn-stderr.ts");
const relaunched = await runWithoutDawnWarnings(process.argv);
if (relaunched !== undefined) {
  process.exitCode = relaunched;
} else {
  const { main } = await import("../src/cli/main.ts");
  process.exitCode = await main(process.argv);
}

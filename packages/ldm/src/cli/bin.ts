#!/usr/bin/env node
// The `ldm` command: dist/cli/bin.js in the published package; in the repository bin/ldm.mjs runs it from source.
process.env.XDG_RUNTIME_DIR ??= "/tmp";
// Imported after the line above: Dawn reads XDG_RUNTIME_DIR when the CLI loads it.
const { runWithoutDawnWarnings } = await import("./dawn-stderr.js");
const relaunched = await runWithoutDawnWarnings(process.argv);
if (relaunched !== undefined) {
  process.exitCode = relaunched;
} else {
  const { main } = await import("./main.ts");
  process.exitCode = await main(process.argv);
}

#!/usr/bin/env node
// Runs the TypeScript CLI (src/cli/bin.ts) directly with tsx, so `pnpm ldm …` needs no build step.
import { register } from "tsx/esm/api";

register();
await import("../src/cli/bin.ts");

import { resolve } from "node:path";
import { defineConfig } from "vite";
import { modelFolder } from "./model-plugin.ts";

/** The model the page loads by default; LDM_WEB_MODEL (relative to the repository root, or absolute) overrides it. */
const repositoryRoot = resolve(import.meta.dirname, "../..");
const model = resolve(repositoryRoot, process.env.LDM_WEB_MODEL ?? "packages/ldm/models/emoji-ldm");

export default defineConfig({
  root: import.meta.dirname,
  plugins: [modelFolder(model)],
  build: { target: "es2022" },
  server: { fs: { allow: [repositoryRoot] } },
});

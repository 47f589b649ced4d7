import { resolve } from "node:path";
import { defineConfig } from "vite";
import { modelFolder } from "./model-plugin.ts";

/** The model the page loads by default; LDM_WEB_MODEL (relative to the repository root, or absolute) overrides it. */
const repositoryRoot = resolve(import.meta.dirname, "../..");
const model = resolve(repositoryRoot, process.env.LDM_WEB_MODEL ?? "packages/ldm/models/emoji-ldm");

/**
 * What the dev server may serve through /@fs/: the page and the sources of the packages it imports (the
 * workspace links resolve to packages/<name>/src), nothing else of the repository (checkpoints, reference
 * dumps, .git) and nothing outside it, but the BERT vocabulary @ldm/ldm ships (the page fetches it for BERT
 * models). The model folder is served by modelFolder under /model/ instead.
 */
const PAGE_PACKAGES = ["tensor", "kernels", "nn", "weights", "ldm"];
const BERT_VOCAB = resolve(repositoryRoot, "packages/ldm/vocab/bert");

export default defineConfig({
  root: import.meta.dirname,
  plugins: [modelFolder(model)],
  build: { target: "es2022" },
  server: {
    fs: {
      strict: true,
      allow: [
        import.meta.dirname,
        BERT_VOCAB,
        ...PAGE_PACKAGES.map((name) => resolve(repositoryRoot, "packages", name, "src")),
      ],
    },
  },
});

import { createReadStream, existsSync, readdirSync, statSync } from "node:fs";
import { cp, mkdir, writeFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { basename, join, resolve, sep } from "node:path";
import type { Plugin } from "vite";
import { MODEL_URL, type ModelManifest } from "./src/manifest.ts";

/**
 * Serves a model folder (one .safetensors, at most one .yaml, tokenizer/vocab.json and tokenizer/merges.txt)
 * under /model/ in `vite` and `vite preview`, and copies it into the build, with a manifest.json naming its
 * files. Files are streamed with their Content-Length, so the page can report loading progress.
 */
export function modelFolder(folder: string): Plugin {
  const root = resolve(folder);
  let manifest: ModelManifest | Error | undefined;
  const getManifest = () => {
    manifest ??= readManifest(root);
    return manifest;
  };
  const serve = (req: IncomingMessage, res: ServerResponse, next: () => void) => {
    const prefix = `/${MODEL_URL}`;
    const path = decodeURIComponent((req.url ?? "").split("?")[0]);
    if (!path.startsWith(prefix)) return next();
    const name = path.slice(prefix.length);
    const found = getManifest();
    if (name === "manifest.json") {
      const failed = found instanceof Error;
      res.writeHead(failed ? 404 : 200, { "content-type": failed ? "text/plain" : "application/json" });
      res.end(failed ? found.message : JSON.stringify(found));
      return;
    }
    const file = resolve(root, name);
    if (!file.startsWith(root + sep) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end(`${name}: not in the model folder ${root}`);
      return;
    }
    res.writeHead(200, { "content-length": statSync(file).size, "content-type": "application/octet-stream" });
    createReadStream(file).pipe(res);
  };
  let outDir = "dist";
  return {
    name: "ldm-model-folder",
    configureServer: (server) => void server.middlewares.use(serve),
    configurePreviewServer: (server) => void server.middlewares.use(serve),
    configResolved: (config) => void (outDir = resolve(config.root, config.build.outDir)),
    async writeBundle() {
      const found = getManifest();
      if (found instanceof Error) throw found;
      const target = join(outDir, MODEL_URL);
      await mkdir(join(target, "tokenizer"), { recursive: true });
      for (const file of [found.weights, found.config, found.vocab, found.merges]) {
        if (file) await cp(join(root, file), join(target, file));
      }
      await writeFile(join(target, "manifest.json"), JSON.stringify(found));
    },
  };
}

/** The manifest of a model folder, or what is wrong with the folder. */
export function readManifest(root: string): ModelManifest | Error {
  if (!existsSync(root) || !statSync(root).isDirectory()) {
    return new Error(`the model folder ${root} does not exist (set LDM_WEB_MODEL to a model folder)`);
  }
  const names = readdirSync(root);
  const weights = names.filter((n) => n.endsWith(".safetensors"));
  const configs = names.filter((n) => n.endsWith(".yaml"));
  if (weights.length !== 1) {
    return new Error(`${root}: expected one .safetensors file, found ${weights.length} (${weights.join(", ")})`);
  }
  if (configs.length > 1) return new Error(`${root}: more than one .yaml config (${configs.join(", ")})`);
  const tokenizer = ["vocab.json", "merges.txt"].map((n) => `tokenizer/${n}`);
  const missing = tokenizer.filter((n) => !existsSync(join(root, n)));
  if (missing.length) return new Error(`${root}: no ${missing.join(" or ")} (the CLIP tokenizer's files)`);
  return {
    name: basename(weights[0], ".safetensors"),
    weights: weights[0],
    config: configs[0],
    vocab: tokenizer[0],
    merges: tokenizer[1],
  };
}

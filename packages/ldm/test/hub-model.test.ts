/**
 * `--model <org>/<repo>`: the built-in model published on a local stand-in for the Hugging Face hub (127.0.0.1,
 * no real network), fetched into a temporary hub cache, then used from that cache with the hub gone.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodePng } from "../src/image/png.ts";
import { isHubName, resolveHubModel } from "../src/pipeline/hub-model.ts";
import { BUILTIN_MODEL } from "../src/pipeline/model-files.ts";
import { PARAMETERS_KEYWORD, parseParameters } from "../src/pipeline/parameters.ts";
import { runCli } from "./helpers/run-cli.ts";

const COMMIT = "89abcdef0123456789abcdef0123456789abcdef";
/** Repository → file path → contents. */
const repos = new Map<string, Map<string, Buffer>>();

/** The hub's protocol as hub.ts uses it: the revision API lists files; resolve answers with ETag and commit. */
function hub(): Server {
  return createServer((req, res) => {
    const url = decodeURIComponent(req.url ?? "");
    const api = /^\/api\/models\/(.+)\/revision\/[^/]+$/.exec(url);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/[^/]+\/(.+)$/.exec(url);
    const files = repos.get((api ?? resolve)?.[1] ?? "");
    if (api && files) {
      res.writeHead(200, { "content-type": "application/json" });
      return void res.end(
        JSON.stringify({ sha: COMMIT, siblings: [...files.keys()].map((rfilename) => ({ rfilename })) }),
      );
    }
    const data = resolve && files?.get(resolve[2]);
    if (!data) return void res.writeHead(404).end();
    res.writeHead(200, {
      "x-repo-commit": COMMIT,
      etag: `"${createHash("sha256").update(data).digest("hex")}"`,
      "content-length": String(data.byteLength),
    });
    res.end(req.method === "HEAD" ? undefined : data);
  });
}

/** Every file of a folder, by relative path. */
function folderFiles(folder: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else files.set(relative(folder, path), readFileSync(path));
    }
  };
  walk(folder);
  return files;
}

let server: Server;
let root: string;
const saved = { ...process.env };

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "ldm-hub-model-"));
  repos.set("org/emoji", folderFiles(dirname(BUILTIN_MODEL)));
  const twoCheckpoints = folderFiles(dirname(BUILTIN_MODEL));
  twoCheckpoints.set("other.safetensors", Buffer.from("x"));
  repos.set("org/two", twoCheckpoints);
  repos.set(
    "org/diffusers",
    new Map([
      ["model_index.json", Buffer.from("{}")],
      ["unet/diffusion_pytorch_model.safetensors", Buffer.from("u")],
      ["unet/diffusion_pytorch_model.fp16.safetensors", Buffer.from("h")],
      ["v1-5-pruned.safetensors", Buffer.from("big")],
    ]),
  );
  server = hub();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  process.env.HF_ENDPOINT = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  process.env.HF_HUB_CACHE = join(root, "cache");
  delete process.env.HF_HUB_OFFLINE;
});
afterAll(async () => {
  process.env = saved;
  if (server.listening) await new Promise((r) => server.close(r));
  rmSync(root, { recursive: true, force: true });
});

const generate = async (...args: string[]) => {
  const out = join(root, `out-${Math.random().toString(36).slice(2)}.png`);
  const result = await runCli(
    "generate",
    "red apple",
    "--seed",
    "42",
    "--steps",
    "2",
    "--sampler",
    "euler",
    "--out",
    out,
    ...args,
  );
  expect(result.code, result.err).toBe(0);
  return decodePng(readFileSync(out), out);
};

describe("--model <org>/<repo>", () => {
  it("tells repository ids from paths", () => {
    expect(isHubName("org/emoji")).toBe(true);
    expect(isHubName("org/emoji/emoji-ldm.safetensors")).toBe(true);
    expect(isHubName("models/model.safetensors")).toBe(false);
    expect(isHubName("./org/emoji")).toBe(false);
    expect(isHubName(BUILTIN_MODEL)).toBe(false);
  });

  it("a diffusers repository brings its pipeline files; a single-file one its checkpoint, config and tokenizer", async () => {
    const diffusers = await resolveHubModel("org/diffusers");
    expect(existsSync(join(diffusers, "model_index.json"))).toBe(true);
    expect(existsSync(join(diffusers, "unet/diffusion_pytorch_model.safetensors"))).toBe(true);
    expect(existsSync(join(diffusers, "v1-5-pruned.safetensors"))).toBe(false);
    await expect(resolveHubModel("org/two")).rejects.toThrow(
      /org\/two holds 2 checkpoints \(emoji-ldm.safetensors, other.safetensors\): pass --model org\/two\/<file>/,
    );
  });

  it("ldm generate fetches it into the hub cache and draws the built-in model's image; then runs from the cache without the hub", async () => {
    const builtin = await generate();
    const fetched = await generate("--model", "org/emoji");
    expect(fetched.data).toEqual(builtin.data);
    expect(parseParameters(fetched.text[PARAMETERS_KEYWORD], "fetched").model).toBe("org/emoji");
    const snapshot = join(process.env.HF_HUB_CACHE ?? "", "models--org--emoji", "snapshots", COMMIT);
    expect(readdirSync(snapshot).sort()).toEqual(["emoji-ldm.safetensors", "emoji-ldm.yaml", "tokenizer"]);

    await new Promise((r) => server.close(r));
    const unreachable = await generate("--model", "org/emoji");
    expect(unreachable.data).toEqual(builtin.data);
    process.env.HF_HUB_OFFLINE = "1";
    try {
      const offline = await generate("--model", "org/emoji/emoji-ldm.safetensors");
      expect(offline.data).toEqual(builtin.data);
      const uncached = await runCli("generate", "x", "--model", "org/never-fetched");
      expect(uncached.code).toBe(1);
      expect(uncached.err).toMatch(/--model org\/never-fetched: org\/never-fetched@main is not in the cache/);
    } finally {
      delete process.env.HF_HUB_OFFLINE;
    }
  });

  it("ldm serve --model org/emoji serves it from the cache, titled by its repository, and stops on SIGTERM", async () => {
    const bin = fileURLToPath(new URL("../bin/ldm.mjs", import.meta.url));
    const child = spawn(process.execPath, [bin, "serve", "--model", "org/emoji", "--port", "0"], {
      env: { ...process.env, HF_HUB_OFFLINE: "1" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    try {
      let stderr = "";
      const url = await new Promise<string>((resolve, reject) => {
        child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
          stderr += chunk;
          const found = /API at (http:\/\/127\.0\.0\.1:\d+)\/sdapi\/v1/.exec(stderr);
          if (found) resolve(found[1]);
        });
        child.once("exit", (code) => reject(new Error(`ldm serve exited (${code}): ${stderr}`)));
      });
      const models = (await (await fetch(`${url}/sdapi/v1/sd-models`)).json()) as { title: string }[];
      expect(models.map((m) => m.title)).toEqual(["org/emoji", "emoji-ldm"]);
      const answer = await fetch(`${url}/sdapi/v1/txt2img`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "red apple", steps: 1, seed: 1 }),
      });
      expect(answer.status).toBe(200);
      expect(JSON.parse(((await answer.json()) as { info: string }).info).sd_model_name).toBe("org/emoji");
    } finally {
      const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve(code ?? signal)));
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
    }
  });
});

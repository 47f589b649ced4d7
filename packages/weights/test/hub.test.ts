import { createHash } from "node:crypto";
import { existsSync, lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { httpReader, SafetensorsFile } from "../src/index.ts";
import {
  hubCacheDir,
  hubDownload,
  hubSnapshot,
  openCheckpoint,
  openSafetensors,
  pipelineFiles,
  repoCacheDir,
} from "../src/node.ts";
import { tinyConfig, writeDiffusers } from "./synthetic.ts";

/**
 * A local stand-in for the Hugging Face hub on 127.0.0.1, with the hub's protocol as huggingface_hub relies
 * on it: `/api/models/<repo>/revision/<rev>` lists files; `/<repo>/resolve/<rev>/<file>` answers small files
 * directly (ETag = git blob id) and large (LFS) files with a redirect carrying X-Linked-Etag (SHA-256) and
 * X-Linked-Size; every answer names the commit in X-Repo-Commit; the LFS store honours Range requests.
 */
const COMMIT = "0123456789abcdef0123456789abcdef01234567";
const REPO = "org/tiny-sd";

interface Served {
  data: Buffer;
  lfs: boolean;
}

const files = new Map<string, Served>();
const log: { method: string; url: string; range?: string }[] = [];
/** Files whose next download breaks off after this many bytes. */
const interruptAfter = new Map<string, number>();
/** Files served with contents that do not match their ETag. */
const corrupt = new Set<string>();

function gitBlobId(data: Buffer): string {
  return createHash("sha1").update(`blob ${data.byteLength}\0`).update(data).digest("hex");
}
function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

function serve(req: IncomingMessage, res: ServerResponse): void {
  const url = decodeURIComponent(req.url ?? "");
  log.push({ method: req.method ?? "", url, range: req.headers.range });
  const api = /^\/api\/models\/(.+)\/revision\/([^/]+)$/.exec(url);
  if (api) {
    if (api[1] !== REPO) return void res.writeHead(404).end();
    res.writeHead(200, { "content-type": "application/json" });
    return void res.end(
      JSON.stringify({ sha: COMMIT, siblings: [...files.keys()].map((rfilename) => ({ rfilename })) }),
    );
  }
  const resolve = /^\/(.+?\/.+?)\/resolve\/([^/]+)\/(.+)$/.exec(url);
  if (resolve) {
    const [, repo, revision, path] = resolve;
    const file = files.get(path);
    if (repo !== REPO || !file || (revision !== "main" && revision !== COMMIT)) return void res.writeHead(404).end();
    if (file.lfs) {
      res.writeHead(302, {
        location: `/lfs/${path}`,
        "x-repo-commit": COMMIT,
        "x-linked-etag": `"${sha256(file.data)}"`,
        "x-linked-size": String(file.data.byteLength),
      });
      return void res.end();
    }
    res.writeHead(200, {
      "x-repo-commit": COMMIT,
      etag: `"${gitBlobId(file.data)}"`,
      "content-length": String(file.data.byteLength),
    });
    return void res.end(req.method === "HEAD" ? undefined : file.data);
  }
  const lfs = /^\/lfs\/(.+)$/.exec(url);
  const file = lfs && files.get(lfs[1]);
  if (!lfs || !file) return void res.writeHead(404).end();
  let data = corrupt.has(lfs[1]) ? Buffer.from(file.data).fill(7, 0, 16) : file.data;
  const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
  if (range) {
    const start = Number(range[1]);
    const end = range[2] ? Math.min(Number(range[2]) + 1, data.byteLength) : data.byteLength;
    if (start >= data.byteLength) return void res.writeHead(416).end();
    res.writeHead(206, {
      "content-range": `bytes ${start}-${end - 1}/${data.byteLength}`,
      "content-length": String(end - start),
    });
    data = data.subarray(start, end);
  } else res.writeHead(200, { "content-length": String(data.byteLength) });
  const cut = interruptAfter.get(lfs[1]);
  if (cut !== undefined) {
    interruptAfter.delete(lfs[1]);
    res.write(data.subarray(0, cut), () => res.destroy());
    return;
  }
  res.end(data);
}

let server: Server;
let endpoint: string;
let root: string;
let cacheDir: string;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "ldm-hub-"));
  server = createServer(serve);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
  rmSync(root, { recursive: true, force: true });
});
beforeEach(() => {
  cacheDir = mkdtempSync(join(root, "cache-"));
  log.length = 0;
  files.clear();
  files.set("model_index.json", { data: Buffer.from('{"_class_name": "StableDiffusionPipeline"}'), lfs: false });
  files.set("unet/diffusion_pytorch_model.safetensors", { data: Buffer.alloc(300_000, 3), lfs: true });
  files.set("unet/diffusion_pytorch_model.fp16.safetensors", { data: Buffer.alloc(150_000, 4), lfs: true });
  files.set("v1-5-pruned.ckpt", { data: Buffer.alloc(10, 5), lfs: true });
});

const options = () => ({ endpoint, cacheDir, progress: false });

describe("hub cache", () => {
  it("finds the cache where huggingface_hub does", () => {
    expect(hubCacheDir({ HF_HUB_CACHE: "/x/hub" })).toBe("/x/hub");
    expect(hubCacheDir({ HF_HOME: "/hf" })).toBe("/hf/hub");
    expect(hubCacheDir({ XDG_CACHE_HOME: "/xdg" })).toBe("/xdg/huggingface/hub");
    expect(repoCacheDir("org/name", "/c")).toBe("/c/models--org--name");
  });

  it("downloads a small file and an LFS file into blobs/, snapshots/<commit>/ and refs/main, checking hashes", async () => {
    const small = await hubDownload(REPO, "model_index.json", options());
    const big = await hubDownload(REPO, "unet/diffusion_pytorch_model.safetensors", options());
    const repoDir = join(cacheDir, "models--org--tiny-sd");
    expect(small).toBe(join(repoDir, "snapshots", COMMIT, "model_index.json"));
    expect(readFileSync(small, "utf8")).toContain("StableDiffusionPipeline");
    expect(lstatSync(big).isSymbolicLink()).toBe(true);
    const blob = sha256(files.get("unet/diffusion_pytorch_model.safetensors")!.data);
    expect(readlinkSync(big)).toBe(join("..", "..", "..", "blobs", blob));
    expect(readFileSync(big).equals(files.get("unet/diffusion_pytorch_model.safetensors")!.data)).toBe(true);
    expect(readFileSync(join(repoDir, "refs", "main"), "utf8")).toBe(COMMIT);
  });

  it("uses the cached blob the second time (metadata request only)", async () => {
    await hubDownload(REPO, "unet/diffusion_pytorch_model.safetensors", options());
    log.length = 0;
    await hubDownload(REPO, "unet/diffusion_pytorch_model.safetensors", options());
    expect(log.map((l) => l.method)).toEqual(["HEAD"]);
  });

  it("resumes an interrupted download with a Range request", async () => {
    const name = "unet/diffusion_pytorch_model.safetensors";
    interruptAfter.set(name, 100_000);
    await expect(hubDownload(REPO, name, options())).rejects.toThrow(
      /download interrupted after \d+ bytes.*run again to resume/,
    );
    const blob = join(cacheDir, "models--org--tiny-sd", "blobs", sha256(files.get(name)!.data));
    expect(existsSync(`${blob}.incomplete`)).toBe(true);
    log.length = 0;
    const path = await hubDownload(REPO, name, options());
    const ranged = log.find((l) => l.url.startsWith("/lfs/"));
    expect(ranged?.range).toMatch(/^bytes=\d+-$/);
    expect(Number(ranged!.range!.slice(6, -1))).toBeGreaterThan(0);
    expect(readFileSync(path).equals(files.get(name)!.data)).toBe(true);
    expect(existsSync(`${blob}.incomplete`)).toBe(false);
  });

  it("rejects contents that do not match the ETag's SHA-256 and keeps nothing", async () => {
    const name = "unet/diffusion_pytorch_model.safetensors";
    corrupt.add(name);
    try {
      await expect(hubDownload(REPO, name, options())).rejects.toThrow(
        /checksum mismatch \(expected [0-9a-f]{64}, got [0-9a-f]{64}\)/,
      );
      expect(existsSync(join(cacheDir, "models--org--tiny-sd", "snapshots", COMMIT, name))).toBe(false);
    } finally {
      corrupt.delete(name);
    }
  });

  it("names missing repositories and files, and unreachable hubs", async () => {
    await expect(hubDownload("org/absent", "model_index.json", options())).rejects.toThrow(
      /org\/absent\/model_index\.json: not found/,
    );
    await expect(hubDownload(REPO, "nope.json", options())).rejects.toThrow(/not found/);
    await expect(
      hubDownload(REPO, "model_index.json", { ...options(), endpoint: "http://127.0.0.1:1" }),
    ).rejects.toThrow(/cannot reach http:\/\/127\.0\.0\.1:1/);
    await expect(hubDownload("../etc", "x", options())).rejects.toThrow(/is not a repository id/);
    await expect(hubDownload(REPO, "../x", options())).rejects.toThrow(/is not a file path inside a repository/);
  });

  it("snapshots the pipeline files of a revision (no root checkpoints), then works offline", async () => {
    const snapshot = await hubSnapshot(REPO, options());
    expect(snapshot).toBe(join(cacheDir, "models--org--tiny-sd", "snapshots", COMMIT));
    expect(existsSync(join(snapshot, "unet", "diffusion_pytorch_model.safetensors"))).toBe(true);
    expect(existsSync(join(snapshot, "unet", "diffusion_pytorch_model.fp16.safetensors"))).toBe(false);
    expect(existsSync(join(snapshot, "v1-5-pruned.ckpt"))).toBe(false);
    log.length = 0;
    expect(await hubSnapshot(REPO, { ...options(), offline: true })).toBe(snapshot);
    expect(await hubDownload(REPO, "model_index.json", { ...options(), offline: true })).toBe(
      join(snapshot, "model_index.json"),
    );
    expect(log).toEqual([]);
    await expect(hubDownload(REPO, "vae/x.json", { ...options(), offline: true })).rejects.toThrow(
      /not in the cache and the hub is offline/,
    );
  });

  it("picks the fp16 variant when asked", () => {
    const wanted = pipelineFiles("fp16");
    expect(wanted("unet/diffusion_pytorch_model.fp16.safetensors")).toBe(true);
    expect(wanted("unet/diffusion_pytorch_model.safetensors")).toBe(false);
    expect(wanted("unet/config.json")).toBe(true);
    expect(wanted("tokenizer/merges.txt")).toBe(true);
    expect(wanted("safety_checker/model.safetensors")).toBe(false);
    expect(pipelineFiles()("unet/diffusion_pytorch_model.bin")).toBe(false);
  });

  it("a downloaded snapshot opens as a checkpoint folder", async () => {
    const source = join(root, "served");
    await writeDiffusers(source, tinyConfig());
    files.clear();
    for (const path of [
      "model_index.json",
      "scheduler/scheduler_config.json",
      "unet/config.json",
      "unet/diffusion_pytorch_model.safetensors",
      "vae/config.json",
      "vae/diffusion_pytorch_model.safetensors",
      "text_encoder/config.json",
      "text_encoder/model.safetensors",
      "tokenizer/vocab.json",
      "tokenizer/merges.txt",
    ]) {
      files.set(path, { data: readFileSync(join(source, path)), lfs: path.endsWith(".safetensors") });
    }
    const checkpoint = await openCheckpoint(await hubSnapshot(REPO, options()));
    expect(checkpoint.layout).toBe("diffusers");
    expect(checkpoint.config().config.unet.model_channels).toBe(8);
    await checkpoint.close();
  });
});

describe("reading over HTTP range requests", () => {
  it("streams a safetensors file from a URL, fetching only the ranges it reads", async () => {
    const fixture = join(import.meta.dirname, "fixtures", "conversions.safetensors");
    files.set("conversions.safetensors", { data: readFileSync(fixture), lfs: true });
    const remote = await SafetensorsFile.open(await httpReader(`${endpoint}/lfs/conversions.safetensors`));
    const local = await openSafetensors(fixture);
    expect([...remote.tensors.keys()]).toEqual([...local.tensors.keys()]);
    log.length = 0;
    expect(await remote.readBytes("odd.f16")).toEqual(await local.readBytes("odd.f16"));
    const e = remote.entry("odd.f16");
    expect(log).toEqual([
      { method: "GET", url: "/lfs/conversions.safetensors", range: `bytes=${e.begin}-${e.end - 1}` },
    ]);
    await local.close();
  });

  it("names a server without the file", async () => {
    await expect(httpReader(`${endpoint}/lfs/absent.safetensors`)).rejects.toThrow(
      /absent\.safetensors: no size \(HTTP 404/,
    );
  });
});

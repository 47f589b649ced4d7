import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { copyFile, mkdir, open, readFile, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join, relative } from "node:path";
import cliProgress from "cli-progress";

/**
 * Downloads from a Hugging Face-style hub (`<endpoint>/<repo>/resolve/<revision>/<file>`) into the standard
 * cache layout that huggingface_hub uses, so both share files:
 *   <cache>/models--org--name/blobs/<etag>                      file contents, named by their ETag
 *   <cache>/models--org--name/snapshots/<commit>/<file>         symlink to the blob
 *   <cache>/models--org--name/refs/<revision>                   the commit a branch or tag resolved to
 * A partial download lives at blobs/<etag>.incomplete and is resumed with a Range request.
 */

export interface HubOptions {
  /** Default: $HF_ENDPOINT, else https://huggingface.co. */
  endpoint?: string;
  /** Default: $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub. */
  cacheDir?: string;
  /** Branch, tag or commit (default "main"). */
  revision?: string;
  /** Bearer token for private repositories (default $HF_TOKEN). */
  token?: string;
  /** Show a progress bar (only ever on a terminal; default: when stderr is one). */
  progress?: boolean;
  /** Resolve from the cache without any network access (default: $HF_HUB_OFFLINE is set to 1). */
  offline?: boolean;
}

export class HubError extends Error {}

export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HF_HOME) return join(env.HF_HOME, "hub");
  return join(env.XDG_CACHE_HOME || join(homedir(), ".cache"), "huggingface", "hub");
}

/** The cache folder of a model repository: models--org--name. */
export function repoCacheDir(repo: string, cacheDir = hubCacheDir()): string {
  return join(cacheDir, `models--${repo.replaceAll("/", "--")}`);
}

interface Settings {
  endpoint: string;
  cache: string;
  revision: string;
  headers: Record<string, string>;
  progress: boolean;
  offline: boolean;
}

function settings(repo: string, options: HubOptions): Settings {
  if (!/^[\w.-]+(\/[\w.-]+)?$/.test(repo) || repo.includes("..")) {
    throw new HubError(`"${repo}" is not a repository id (like org/name)`);
  }
  const token = options.token ?? process.env.HF_TOKEN;
  return {
    endpoint: (options.endpoint ?? process.env.HF_ENDPOINT ?? "https://huggingface.co").replace(/\/+$/, ""),
    cache: repoCacheDir(repo, options.cacheDir ?? hubCacheDir()),
    revision: options.revision ?? "main",
    headers: token ? { authorization: `Bearer ${token}` } : {},
    progress: (options.progress ?? true) && process.stderr.isTTY === true,
    offline: options.offline ?? ["1", "true", "yes"].includes((process.env.HF_HUB_OFFLINE ?? "").toLowerCase()),
  };
}

const COMMIT = /^[0-9a-f]{40}$/;

/** Downloads one file of a repository (or finds it in the cache); returns its path in the snapshot. */
export async function hubDownload(repo: string, file: string, options: HubOptions = {}): Promise<string> {
  const s = settings(repo, options);
  assertRelative(file);
  if (s.offline) return cachedFile(s, repo, file);
  const url = `${s.endpoint}/${repo}/resolve/${encodeURIComponent(s.revision)}/${file.split("/").map(encodeURIComponent).join("/")}`;
  const head = await request(url, { method: "HEAD", headers: s.headers, redirect: "manual" }, `${repo}/${file}`);
  // LFS files answer with a redirect whose headers carry the content hash (X-Linked-Etag) and size.
  const etag = normalizeEtag(head.headers.get("x-linked-etag") ?? head.headers.get("etag"));
  const commit = head.headers.get("x-repo-commit");
  if (!etag || !commit || !COMMIT.test(commit)) {
    throw new HubError(
      `${url}: the hub's answer lacks an ETag or X-Repo-Commit header; is ${s.endpoint} a Hugging Face hub?`,
    );
  }
  const sizeHeader = head.headers.get("x-linked-size") ?? head.headers.get("content-length");
  const size = sizeHeader === null ? undefined : Number(sizeHeader);
  const blob = join(s.cache, "blobs", etag);
  const pointer = join(s.cache, "snapshots", commit, file);
  if (!(await exists(blob))) await fetchBlob(url, blob, etag, size, s, file);
  await link(blob, pointer);
  if (s.revision !== commit) await writeRef(s, commit);
  return pointer;
}

export interface SnapshotOptions extends HubOptions {
  /** Which repository files to fetch (default: everything a diffusers pipeline needs, see `pipelineFiles`). */
  include?: (path: string) => boolean;
}

/**
 * The files of a diffusers Stable Diffusion repository that this project reads: model_index.json, the
 * scheduler and tokenizer files, and the safetensors (and JSON) files of unet/, vae/ and text_encoder/ — the
 * fp16 variant when `variant` is "fp16", else the full-precision files. Root-level single-file checkpoints,
 * pickles and other frameworks' exports are left out.
 */
export function pipelineFiles(variant?: "fp16"): (path: string) => boolean {
  return (path) => {
    if (path === "model_index.json") return true;
    const [folder, name, ...deeper] = path.split("/");
    if (!name || deeper.length) return false;
    if (folder === "scheduler" || folder === "tokenizer") return /\.(json|txt)$/.test(name);
    if (!["unet", "vae", "text_encoder"].includes(folder)) return false;
    if (name.endsWith(".json"))
      return !name.includes(".index.") || name.includes(".index.fp16.") === (variant === "fp16");
    if (!name.endsWith(".safetensors")) return false;
    return /\.fp16[.-]/.test(name) === (variant === "fp16");
  };
}

/** Downloads a repository's files at a revision (listed by the hub's API) into the cache; returns the snapshot folder. */
export async function hubSnapshot(repo: string, options: SnapshotOptions = {}): Promise<string> {
  const s = settings(repo, options);
  if (s.offline) {
    const commit = COMMIT.test(s.revision) ? s.revision : await readRef(s, repo);
    return join(s.cache, "snapshots", commit);
  }
  const api = `${s.endpoint}/api/models/${repo}/revision/${encodeURIComponent(s.revision)}`;
  const info = (await (await request(api, { headers: s.headers }, repo)).json()) as {
    sha?: unknown;
    siblings?: { rfilename?: unknown }[];
  };
  if (typeof info.sha !== "string" || !COMMIT.test(info.sha) || !Array.isArray(info.siblings)) {
    throw new HubError(`${api}: unexpected answer (no commit sha or file list)`);
  }
  const include = options.include ?? pipelineFiles();
  const files = info.siblings.map((f) => f.rfilename).filter((f): f is string => typeof f === "string" && include(f));
  if (!files.length) throw new HubError(`${repo}@${s.revision}: none of the repository's files are wanted`);
  for (const file of files) await hubDownload(repo, file, { ...options, revision: info.sha });
  if (s.revision !== info.sha) await writeRef(s, info.sha);
  return join(s.cache, "snapshots", info.sha);
}

/** Fetches `url`; HTTP errors (other than the statuses in `allowed`) become HubErrors that say what to check. */
async function request(url: string, init: RequestInit, what: string, allowed: number[] = []): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    throw new HubError(
      `${what}: cannot reach ${new URL(url).origin} (${cause?.code ?? cause?.message ?? (e as Error).message})`,
    );
  }
  if (response.status >= 400 && !allowed.includes(response.status)) {
    const reason =
      response.status === 401 || response.status === 403
        ? "access denied (gated or private repository? set HF_TOKEN)"
        : response.status === 404
          ? "not found (check the repository, revision and file name)"
          : `HTTP ${response.status}`;
    await response.body?.cancel();
    throw new HubError(`${what}: ${reason} at ${url}`);
  }
  return response;
}

/** Streams `url` into `blob` through `blob.incomplete`, resuming a partial file, checking the hash the ETag names. */
async function fetchBlob(url: string, blob: string, etag: string, size: number | undefined, s: Settings, file: string) {
  const partial = `${blob}.incomplete`;
  await mkdir(dirname(blob), { recursive: true });
  let have = (await exists(partial)) ? (await stat(partial)).size : 0;
  const headers = { ...s.headers, ...(have > 0 ? { range: `bytes=${have}-` } : {}) };
  let response = await request(url, { headers }, file, [416]);
  if (response.status === 416) {
    // The partial file is not a prefix the server recognises: start over.
    await response.body?.cancel();
    have = 0;
    response = await request(url, { headers: s.headers }, file);
  }
  if (response.status !== 206) have = 0; // the server ignored the range: it sends the whole file
  const total = size ?? (Number(response.headers.get("content-length")) || 0) + have;
  const hash = hasher(etag, total);
  if (hash && have > 0) await hashFile(partial, hash);
  const handle = await open(partial, have > 0 ? "a" : "w");
  const bar = s.progress ? progressBar(file, total, have) : undefined;
  try {
    if (!response.body) throw new HubError(`${file}: empty response from ${url}`);
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      await handle.write(chunk);
      hash?.update(chunk);
      have += chunk.byteLength;
      bar?.update(have);
    }
  } catch (e) {
    // Keep what arrived: the next attempt resumes from it.
    throw e instanceof HubError
      ? e
      : new HubError(
          `${file}: download interrupted after ${have} bytes (${(e as Error).message}); run again to resume`,
        );
  } finally {
    bar?.stop();
    await handle.close();
  }
  if (size !== undefined && have !== size) {
    throw new HubError(`${file}: received ${have} bytes, expected ${size}; run again to resume`);
  }
  const digest = hash?.digest("hex");
  if (digest !== undefined && digest !== etag) {
    await rm(partial, { force: true });
    throw new HubError(
      `${file}: checksum mismatch (expected ${etag}, got ${digest}); the partial download was deleted`,
    );
  }
  await rename(partial, blob);
}

/**
 * The hash an ETag names: LFS files are named by the SHA-256 of their contents, regular files by their git
 * blob id (SHA-1 of "blob <size>\0" + contents). Other ETags are opaque and not checked.
 */
function hasher(etag: string, size: number): Hash | undefined {
  if (/^[0-9a-f]{64}$/.test(etag)) return createHash("sha256");
  if (/^[0-9a-f]{40}$/.test(etag) && size > 0) return createHash("sha1").update(`blob ${size}\0`);
  return undefined;
}

async function hashFile(path: string, hash: Hash): Promise<void> {
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
}

function normalizeEtag(etag: string | null): string | undefined {
  return etag?.replace(/^W\//, "").replaceAll('"', "") || undefined;
}

function progressBar(file: string, total: number, start: number): cliProgress.SingleBar {
  const bar = new cliProgress.SingleBar(
    {
      format: `${file} [{bar}] {percentage}% | {value}/{total} MB`,
      formatValue: (v, _o, type) => (type === "value" || type === "total" ? (v / 2 ** 20).toFixed(1) : String(v)),
      stream: process.stderr,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, start);
  return bar;
}

async function link(blob: string, pointer: string): Promise<void> {
  await mkdir(dirname(pointer), { recursive: true });
  await rm(pointer, { force: true });
  try {
    await symlink(relative(dirname(pointer), blob), pointer);
  } catch {
    await copyFile(blob, pointer); // file systems without symlinks
  }
}

async function writeRef(s: Settings, commit: string): Promise<void> {
  const ref = join(s.cache, "refs", s.revision);
  await mkdir(dirname(ref), { recursive: true });
  await writeFile(ref, commit);
}

async function readRef(s: Settings, repo: string): Promise<string> {
  const commit = await readFile(join(s.cache, "refs", s.revision), "utf8").catch(() => "");
  if (!COMMIT.test(commit.trim())) {
    throw new HubError(
      `${repo}@${s.revision} is not in the cache (${s.cache}) and the hub is offline (HF_HUB_OFFLINE)`,
    );
  }
  return commit.trim();
}

async function cachedFile(s: Settings, repo: string, file: string): Promise<string> {
  const commit = COMMIT.test(s.revision) ? s.revision : await readRef(s, repo);
  const pointer = join(s.cache, "snapshots", commit, file);
  if (!(await exists(pointer)))
    throw new HubError(`${repo}/${file}@${s.revision} is not in the cache and the hub is offline`);
  return pointer;
}

function assertRelative(file: string): void {
  if (!file || file.startsWith("/") || file.split("/").some((p) => p === ".." || p === "")) {
    throw new HubError(`"${file}" is not a file path inside a repository`);
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

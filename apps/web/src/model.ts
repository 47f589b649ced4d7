/// <reference types="vite/client" />
import {
  BertTokenizer,
  ClipTokenizer,
  clipTokenizerFromGzip,
  LatentDiffusion,
  type LoadedModel,
  loadModelFromBlob,
  loadModelFromStream,
  type ModelDescription,
  modelInputs,
  readModelConfig,
} from "@ldm/ldm";
import type { Device, ParamDType } from "@ldm/tensor";
// bert-base-uncased's vocab.txt as @ldm/ldm ships it, fetched only for BERTEmbedder models.
import bertVocabUrl from "../../../packages/ldm/vocab/bert/vocab.txt?url";
import { ModelError } from "./errors.ts";
import { MODEL_URL, type ModelManifest } from "./manifest.ts";

/** A pipeline with what frees it. */
export interface LoadedPipeline {
  pipeline: LatentDiffusion;
  /** What the page says it is running, e.g. "emoji-ldm (built-in, f32)". */
  label: string;
  dispose(): void;
}

export interface LoadTarget {
  device: Device;
  dtype: ParamDType;
  /** Bytes of weights read so far, and the total when known. */
  onBytes?: (loaded: number, total: number | undefined) => void;
  /** Where the built-in model's weights come from: the browser's cache or the network. */
  onSource?: (source: "cache" | "network") => void;
}

/** The model the server publishes under MODEL_URL: weights streamed from the response body as they arrive. */
export async function loadBuiltinModel(target: LoadTarget): Promise<LoadedPipeline> {
  const manifest = JSON.parse(await fetchText(`${MODEL_URL}manifest.json`)) as ModelManifest;
  const at = (file: string) => `${MODEL_URL}${file}`;
  const [vocab, merges, config] = await Promise.all([
    fetchText(at(manifest.vocab)),
    fetchText(at(manifest.merges)),
    manifest.config ? fetchText(at(manifest.config)) : undefined,
  ]);
  const { response, cached, store } = await weightsResponse(at(manifest.weights));
  target.onSource?.(cached ? "cache" : "network");
  const length = response.headers.get("content-length");
  const size = length === null ? undefined : Number(length);
  if (!response.body) throw new ModelError(`${at(manifest.weights)}: the response has no body`);
  const model = await loadModelFromStream(counted(response.body, size, target.onBytes), {
    device: target.device,
    dtype: target.dtype,
    origin: at(manifest.weights),
    size,
    config: config === undefined ? undefined : { text: config, origin: at(manifest.config ?? "") },
  });
  await store;
  const tokenizer = ClipTokenizer.fromVocabAndMerges(vocab, merges);
  const source = cached ? "from the browser's cache" : "downloaded";
  return assemble(model, tokenizer, manifest.name, `${manifest.name} (built-in, ${source}, ${target.dtype})`);
}

/** The Cache Storage cache that keeps served weights across reloads (see weightsResponse). */
const WEIGHTS_CACHE = "ldm-weights-v1";

/**
 * The weights' response: from Cache Storage when a copy is there and the server (asked with a HEAD request)
 * still has the same file — same ETag, else Last-Modified, else Content-Length — or cannot be reached; else
 * from the network, stored while it streams (`store` settles when the copy is written; a full disk only
 * means no copy). Without Cache Storage (an insecure origin) the network every time.
 */
async function weightsResponse(url: string): Promise<{ response: Response; cached: boolean; store?: Promise<void> }> {
  const cache = await globalThis.caches?.open(WEIGHTS_CACHE).catch(() => undefined);
  const hit = await cache?.match(url);
  if (cache && hit) {
    const head = await fetch(url, { method: "HEAD" }).catch(() => undefined);
    if (!head?.ok || sameFile(hit.headers, head.headers)) return { response: hit, cached: true };
    await cache.delete(url);
  }
  const response = await fetchOk(url);
  if (!cache) return { response, cached: false };
  const store = cache.put(url, response.clone()).catch((e) => console.warn(`weights not cached: ${e}`));
  return { response, cached: false, store };
}

function sameFile(a: Headers, b: Headers): boolean {
  for (const header of ["etag", "last-modified", "content-length"]) {
    const [x, y] = [a.get(header), b.get(header)];
    if (x !== null && y !== null) return x === y;
  }
  return true;
}

/** The files of a user's checkpoint from the file picker: one checkpoint, at most one .yaml config. */
function localFiles(files: readonly File[]) {
  const pick = (test: (name: string) => boolean) => files.filter((f) => test(f.name.toLowerCase()));
  const weights = pick((n) => /\.(safetensors|ckpt|pt|pth)$/.test(n));
  const configs = pick((n) => n.endsWith(".yaml") || n.endsWith(".yml"));
  if (weights.length !== 1) {
    throw new ModelError(`choose exactly one .safetensors or .ckpt checkpoint (got ${weights.length})`);
  }
  if (configs.length > 1) throw new ModelError(`choose at most one .yaml config (got ${configs.length})`);
  return { pick, file: weights[0], config: configs[0] as File | undefined };
}

/**
 * What a user's checkpoint is, from its config (or its header: detection) without loading any weights: what
 * the page shows inputs for as soon as the files are chosen.
 */
export async function describeLocalModel(files: readonly File[]): Promise<ModelDescription["config"]> {
  const { file, config } = localFiles(files);
  try {
    const yaml = config && { text: await config.text(), origin: config.name };
    return (await readModelConfig(file, { origin: file.name, config: yaml })).config;
  } catch (e) {
    throw new ModelError((e as Error).message);
  }
}

/**
 * A user's checkpoint from the file picker: one .safetensors or PyTorch .ckpt/.pt/.pth, each tensor sliced from
 * the File when loaded (never read whole; a .ckpt's pickle is read as data, never executed), an optional
 * original-style .yaml config, and what its cond stage reads text with: CLIP's tokenizer files (vocab.json with
 * merges.txt, or bpe_simple_vocab_16e6.txt.gz), BERT's vocab.txt (default: the shipped bert-base-uncased).
 */
export async function loadLocalModel(files: readonly File[], target: LoadTarget): Promise<LoadedPipeline> {
  const { pick, file, config } = localFiles(files);
  // The tokenizer first, so missing tokenizer files are named before any weights are read.
  const prompted = modelInputs(await describeLocalModel(files)).prompted;
  const tokenizer =
    prompted === "clip" ? await localTokenizer(pick) : prompted === "bert" ? await bertTokenizer(pick) : undefined;
  const model = await loadModelFromBlob(file, {
    device: target.device,
    dtype: target.dtype,
    origin: file.name,
    config: config && { text: await config.text(), origin: config.name },
    onBytes: (read) => target.onBytes?.(read, file.size),
  });
  const name = file.name.replace(/\.(safetensors|ckpt|pt|pth)$/i, "");
  return assemble(model, tokenizer, name, `${file.name} (local file, ${target.dtype})`);
}

async function localTokenizer(pick: (test: (name: string) => boolean) => File[]): Promise<ClipTokenizer> {
  const [vocab] = pick((n) => n === "vocab.json");
  const [merges] = pick((n) => n === "merges.txt");
  const [gzipped] = pick((n) => n.endsWith(".txt.gz"));
  if (vocab && merges) return ClipTokenizer.fromVocabAndMerges(await vocab.text(), await merges.text());
  if (gzipped) return clipTokenizerFromGzip(new Uint8Array(await gzipped.arrayBuffer()));
  throw new ModelError(
    "choose the checkpoint's tokenizer with it: vocab.json and merges.txt, or bpe_simple_vocab_16e6.txt.gz",
  );
}

/** A vocab.txt chosen with the checkpoint, else the shipped bert-base-uncased one (what upstream's BERTTokenizer loads). */
async function bertTokenizer(pick: (test: (name: string) => boolean) => File[]): Promise<BertTokenizer> {
  const [chosen] = pick((n) => n === "vocab.txt");
  const [text, origin] = chosen ? [await chosen.text(), chosen.name] : [await fetchText(bertVocabUrl), bertVocabUrl];
  try {
    return new BertTokenizer(text);
  } catch (e) {
    throw new ModelError(`${origin}: ${(e as Error).message}`);
  }
}

function assemble(
  model: LoadedModel,
  tokenizer: ClipTokenizer | BertTokenizer | undefined,
  name: string,
  label: string,
): LoadedPipeline {
  const { config, unet, vae, clip, cond } = model;
  if (!unet || !vae) throw new Error("internal: the loader did not build every network");
  try {
    const networks = { config, unet, vae, clip, cond };
    const pipeline = LatentDiffusion.fromNetworks(networks, tokenizer, name, model.scaleFactor);
    return { pipeline, label, dispose: () => model.dispose() };
  } catch (e) {
    model.dispose();
    throw new ModelError((e as Error).message);
  }
}

/** The stream, reporting the bytes that have passed through it. */
function counted(
  stream: ReadableStream<Uint8Array>,
  total: number | undefined,
  onBytes: LoadTarget["onBytes"],
): ReadableStream<Uint8Array> {
  if (!onBytes) return stream;
  let loaded = 0;
  return stream.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        loaded += chunk.byteLength;
        onBytes(loaded, total);
        controller.enqueue(chunk);
      },
    }),
  );
}

async function fetchOk(url: string): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new ModelError(`${url}: cannot reach the server (${(e as Error).message})`);
  }
  if (!response.ok) {
    const text = await response.text().catch(() => "");
    throw new ModelError(`${url}: HTTP ${response.status}${text ? ` — ${text}` : ""}`);
  }
  return response;
}

async function fetchText(url: string): Promise<string> {
  return (await fetchOk(url)).text();
}

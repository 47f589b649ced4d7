/**
 * `--model <org>/<repo>`: a model named by its Hugging Face repository, fetched into (or found in) the hub cache
 * that huggingface_hub shares (see @ldm/weights' hub.ts). A diffusers repository brings the files a pipeline
 * reads; a repository without model_index.json brings its root-level single-file checkpoint, the YAML config
 * beside it and its tokenizer/ folder. `<org>/<repo>/<file>.safetensors` picks one checkpoint of several.
 */
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { HubError, type HubOptions, hubDownload, hubSnapshot, pipelineFiles } from "@ldm/weights/node";

const REPO_ID = /^[\w-][\w.-]*\/[\w-][\w.-]*$/;
const REPO_FILE = /^([\w-][\w.-]*\/[\w-][\w.-]*)\/([\w-][\w.-]*\.safetensors)$/;
/** What a relative path to a file has, and a repository id has not. */
const FILE_EXTENSION = /\.(safetensors|ckpt|pt|pth|bin|yaml)$/i;

/** Whether a --model value names a hub repository: org/name or org/name/file.safetensors, not an existing path. */
export function isHubName(model: string): boolean {
  if (existsSync(model)) return false;
  return REPO_FILE.test(model) || (REPO_ID.test(model) && !FILE_EXTENSION.test(model));
}

/** The files of a single-file repository: the checkpoint (one, or all root ones), configs beside it, the tokenizer. */
function singleFileFiles(checkpoint?: string): (path: string) => boolean {
  const stem = checkpoint?.replace(/\.safetensors$/i, "");
  return (path) => {
    const [first, second, ...deeper] = path.split("/");
    if (second !== undefined) return first === "tokenizer" && !deeper.length && /\.(json|txt|gz)$/.test(second);
    if (stem !== undefined) return path === checkpoint || path === `${stem}.yaml`;
    return /\.(safetensors|yaml)$/i.test(path);
  };
}

/**
 * The local path of a hub model: a diffusers snapshot folder, or the single-file checkpoint in the snapshot.
 * Without a network (the hub unreachable, or HF_HUB_OFFLINE=1) what the cache holds is used.
 */
export async function resolveHubModel(name: string, options: HubOptions = {}): Promise<string> {
  const pick = REPO_FILE.exec(name);
  const repo = pick ? pick[1] : name;
  /** `fetch` with the hub, else (unreachable) from the cache, reporting the hub's error if the cache lacks it. */
  const withCache = async <T>(fetch: (o: HubOptions) => Promise<T>): Promise<T> => {
    try {
      return await fetch(options);
    } catch (e) {
      if (!(e instanceof HubError) || !/cannot reach/.test(e.message) || options.offline) throw e;
      return fetch({ ...options, offline: true }).catch(() => Promise.reject(e));
    }
  };
  let include = pick && singleFileFiles(pick[2]);
  if (!include) {
    const diffusers = await withCache((o) => hubDownload(repo, "model_index.json", o)).then(
      () => true,
      (e) => {
        if (e instanceof HubError && /not found|not in the cache|cannot reach/.test(e.message)) return false;
        throw e;
      },
    );
    include = diffusers ? pipelineFiles() : singleFileFiles();
  }
  const files = include;
  const folder = await withCache((o) => hubSnapshot(repo, { ...o, include: files }));
  if (pick) return join(folder, pick[2]);
  if (existsSync(join(folder, "model_index.json"))) return folder;
  const checkpoints = readdirSync(folder).filter((f) => f.toLowerCase().endsWith(".safetensors"));
  if (checkpoints.length === 1) return join(folder, checkpoints[0]);
  if (!checkpoints.length) throw new HubError(`${repo} has neither model_index.json nor a .safetensors checkpoint`);
  throw new HubError(
    `${repo} holds ${checkpoints.length} checkpoints (${checkpoints.join(", ")}): pass --model ${repo}/<file>`,
  );
}

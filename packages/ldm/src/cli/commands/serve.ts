import { existsSync } from "node:fs";
import type { Command } from "commander";
import { isHubName } from "../../pipeline/hub-model.ts";
import { BUILTIN_MODEL } from "../../pipeline/model-files.ts";
import { DEFAULT_LIMITS } from "../../server/a1111.ts";
import { type Checkpoint, checkpointAt, scanModelsFolder } from "../../server/models.ts";
import { UserError } from "../errors.ts";
import {
  addModelOptions,
  integerFlag,
  loadEmbeddingFlags,
  loadLatentDiffusion,
  type ModelFlags,
  modelPath,
} from "./pipeline-flags.ts";

interface ServeFlags extends ModelFlags {
  modelsDir?: string;
  host: string;
  port: string;
  apiAuth?: string;
  corsAllowOrigins?: string;
  corsAllowOriginsRegex?: string;
  queue: string;
  maxPixels: string;
  maxSteps: string;
  maxBatch: string;
  maxBodyMb: string;
  loraDir?: string;
  embeddingsDir?: string;
}

export function registerServe(program: Command): void {
  const command = program
    .command("serve")
    .description("serve AUTOMATIC1111's /sdapi/v1 web API (txt2img, img2img, progress, interrupt, options, …)")
    .option("--models-dir <folder>", "also offer the .safetensors files and diffusers folders in this folder")
    .option("--host <address>", "address to listen on (0.0.0.0: every interface)", "127.0.0.1")
    .option("--port <n>", "port to listen on", "7860")
    .option("--api-auth <user:password>", "HTTP basic authentication on every route (several: comma-separated)")
    .option("--cors-allow-origins <origins>", "comma-separated origins browsers may call from (default: none)")
    .option("--cors-allow-origins-regex <regex>", "origins browsers may call from, as a regular expression")
    .option("--queue <n>", "requests that may wait while one runs; past it: 503", "16")
    .option("--max-pixels <n>", "largest width × height of a request", String(DEFAULT_LIMITS.maxPixels))
    .option("--max-steps <n>", "most sampling steps of a request", String(DEFAULT_LIMITS.maxSteps))
    .option("--max-batch <n>", "largest batch_size of a request", String(DEFAULT_LIMITS.maxBatch))
    .option("--max-body-mb <n>", "largest request body in MiB; past it: 413", "64")
    .option("--lora-dir <folder>", "LoRA files for prompts' <lora:name:strength> tags, listed by /sdapi/v1/loras")
    .option(
      "--embeddings-dir <folder>",
      "textual-inversion embeddings for prompts, by file name (A1111's embeddings folder), listed by /sdapi/v1/embeddings",
    );
  addModelOptions(command).action(async (flags: ServeFlags) => {
    const port = integerFlag("--port", flags.port, 0);
    if (flags.loraDir && !existsSync(flags.loraDir)) throw new UserError(`--lora-dir ${flags.loraDir} does not exist`);
    if (port > 65535) throw new UserError(`--port ${port} is not a port number`);
    // A hub model is titled by its repository; it is resolved again (from the cache) when reloaded.
    const hub = flags.model !== undefined && isHubName(flags.model);
    const first = checkpointAt(await modelPath(flags.model), {
      title: hub ? flags.model : flags.model ? undefined : "emoji-ldm",
      config: flags.config,
    });
    const checkpoints: Checkpoint[] = [first];
    if (flags.model && existsSync(BUILTIN_MODEL)) checkpoints.push(checkpointAt(BUILTIN_MODEL, { title: "emoji-ldm" }));
    if (flags.modelsDir) {
      if (!existsSync(flags.modelsDir)) throw new UserError(`--models-dir ${flags.modelsDir} does not exist`);
      for (const c of scanModelsFolder(flags.modelsDir)) {
        if (!checkpoints.some((k) => k.filename === c.filename)) checkpoints.push(c);
      }
    }
    // Fastify and its plugins load here, not with every other command of the CLI.
    const { serve } = await import("../../server/server.ts");
    const server = await serve({
      checkpoints,
      loader: async (c) => {
        const pipe = await loadLatentDiffusion({
          model: c === first && hub ? flags.model : c.filename,
          config: c.config ?? undefined,
          vocab: c === first ? flags.vocab : undefined,
          f16: flags.f16,
          cpuLanes: flags.cpuLanes,
        });
        try {
          await loadEmbeddingFlags(pipe, { embeddingsDir: flags.embeddingsDir });
        } catch (e) {
          pipe.dispose();
          throw e;
        }
        return pipe;
      },
      host: flags.host,
      port,
      apiAuth: flags.apiAuth,
      corsOrigins: flags.corsAllowOrigins?.split(",").map((o) => o.trim()),
      corsOriginRegex: flags.corsAllowOriginsRegex,
      queue: integerFlag("--queue", flags.queue, 0),
      limits: {
        maxPixels: integerFlag("--max-pixels", flags.maxPixels, 64),
        maxSteps: integerFlag("--max-steps", flags.maxSteps, 1),
        maxBatch: integerFlag("--max-batch", flags.maxBatch, 1),
      },
      bodyLimit: integerFlag("--max-body-mb", flags.maxBodyMb, 1) * 2 ** 20,
      loraDir: flags.loraDir,
    }).catch((e: Error) => {
      throw new UserError(e.message.split("\n")[0]);
    });
    console.error(
      `ldm serve: ${first.title} loaded; AUTOMATIC1111 API at ${server.url}/sdapi/v1 (docs: ${server.url}/docs)`,
    );
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off("SIGINT", stop);
        process.off("SIGTERM", stop);
        void server.close().then(resolve);
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    });
  });
}

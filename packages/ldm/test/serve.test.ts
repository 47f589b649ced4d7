/**
 * `ldm serve` on 127.0.0.1 with the built-in model (64×64, few steps), driven through real HTTP clients (fetch,
 * and node:http where a client must vanish mid-request).
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { useDevice } from "@ldm/tensor/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodePng, encodePng } from "../src/image/png.ts";
import { BUILTIN_MODEL } from "../src/pipeline/model-files.ts";
import { StableDiffusion } from "../src/pipeline/stable-diffusion.ts";
import { checkpointAt } from "../src/server/models.ts";
import { type LdmServer, type ServeOptions, serve } from "../src/server/server.ts";
import { runCli } from "./helpers/run-cli.ts";

const device = await useDevice();
let dir: string;
const servers: LdmServer[] = [];

/** A server on a free port; every one loads the built-in model onto the test's one device. */
async function start(options: Partial<ServeOptions> = {}): Promise<LdmServer> {
  const server = await serve({
    checkpoints: [checkpointAt(BUILTIN_MODEL, { title: "emoji-ldm" })],
    loader: async (c) => {
      const pipe = await StableDiffusion.load(c.filename, { device, config: c.config ?? undefined });
      // The pipeline's own memory bound (set from system memory on CPU adapters), low enough to refuse 512×512.
      pipe.memoryLimit = 2 ** 28;
      return pipe;
    },
    port: 0,
    ...options,
  });
  servers.push(server);
  return server;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "ldm-serve-"));
});
afterAll(async () => {
  for (const s of servers) await s.close();
  rmSync(dir, { recursive: true, force: true });
});

async function post(server: LdmServer, path: string, body: unknown, headers: Record<string, string> = {}) {
  const response = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: response.status, headers: response.headers, json: await response.json() };
}

async function get(server: LdmServer, path: string, headers: Record<string, string> = {}) {
  const response = await fetch(`${server.url}${path}`, { headers });
  const text = await response.text();
  return { status: response.status, headers: response.headers, text, json: () => JSON.parse(text) };
}

/** Polls /progress (every 20 ms, at most `tries` times) until `until` holds; returns the last answer. */
async function waitProgress(server: LdmServer, until: (p: ProgressAnswer) => boolean, tries = 1500) {
  for (let i = 0; i < tries; i++) {
    const p = (await get(server, "/sdapi/v1/progress")).json() as ProgressAnswer;
    if (until(p)) return p;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("progress never reached the awaited state");
}
interface ProgressAnswer {
  progress: number;
  eta_relative: number;
  state: { job_count: number; sampling_step: number; sampling_steps: number; interrupted: boolean };
  current_image: string | null;
}

const QUICK = { prompt: "red apple", steps: 3, seed: 42, sampler_name: "Euler", cfg_scale: 7.5 };

describe("ldm serve: the A1111 endpoints", () => {
  let server: LdmServer;
  beforeAll(async () => {
    server = await start({ bodyLimit: 2 ** 20 });
  });

  it("lists models, samplers, options and an idle progress; serves the OpenAPI document and /docs", async () => {
    const models = (await get(server, "/sdapi/v1/sd-models")).json();
    expect(models).toEqual([
      expect.objectContaining({ title: "emoji-ldm", model_name: "emoji-ldm", filename: BUILTIN_MODEL, hash: null }),
    ]);
    const samplers = (await get(server, "/sdapi/v1/samplers")).json() as { name: string; aliases: string[] }[];
    expect(samplers.map((s) => s.name)).toEqual(
      expect.arrayContaining(["Euler", "Euler a", "DDIM", "DPM++ 2M", "LCM"]),
    );
    expect(samplers.find((s) => s.name === "Euler a")?.aliases).toContain("euler_ancestral");
    const options = (await get(server, "/sdapi/v1/options")).json();
    expect(options).toMatchObject({ sd_model_checkpoint: "emoji-ldm", samples_format: "png" });
    const progress = (await get(server, "/sdapi/v1/progress")).json();
    expect(progress).toMatchObject({ progress: 0, eta_relative: 0, state: { job_count: 0 }, current_image: null });
    const openapi = (await get(server, "/openapi.json")).json();
    expect(Object.keys(openapi.paths)).toEqual(expect.arrayContaining(["/sdapi/v1/txt2img", "/sdapi/v1/img2img"]));
    expect(
      openapi.paths["/sdapi/v1/txt2img"].post.requestBody.content["application/json"].schema.properties,
    ).toHaveProperty("cfg_scale");
    const docs = await get(server, "/docs/");
    expect(docs.status).toBe(200);
    expect(docs.text).toMatch(/swagger/i);
  });

  it("a txt2img answers with the PNG `ldm generate` writes for the same parameters, byte for byte", async () => {
    const out = join(dir, "generate.png");
    const cli = await runCli(
      "generate",
      "red apple",
      "--seed",
      "42",
      "--steps",
      "3",
      "--sampler",
      "euler",
      "--cfg",
      "7.5",
      "--out",
      out,
    );
    expect(cli.code, cli.err).toBe(0);
    const { status, json } = await post(server, "/sdapi/v1/txt2img", { ...QUICK, unknown_field: 1 });
    expect(status).toBe(200);
    expect(json.images).toHaveLength(1);
    expect(Buffer.from(json.images[0], "base64").equals(readFileSync(out))).toBe(true);
    // The echo: the request with A1111's defaults, the unknown field dropped, the size the model ran at.
    expect(json.parameters).toMatchObject({ ...QUICK, batch_size: 1, n_iter: 1, width: 64, height: 64, eta: null });
    expect(json.parameters).not.toHaveProperty("unknown_field");
    const info = JSON.parse(json.info);
    expect(info).toMatchObject({ seed: 42, all_seeds: [42], sampler_name: "Euler", steps: 3, width: 64, height: 64 });
    expect(info.infotexts[0]).toBe(
      "red apple\nSteps: 3, Sampler: Euler, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: emoji-ldm",
    );
  });

  it("sampler names as A1111 spells them, with the scheduler or the older ' Karras' names", async () => {
    const karras = await post(server, "/sdapi/v1/txt2img", { ...QUICK, sampler_name: "DPM++ 2M", scheduler: "Karras" });
    const legacy = await post(server, "/sdapi/v1/txt2img", { ...QUICK, sampler_name: "DPM++ 2M Karras" });
    const ours = await post(server, "/sdapi/v1/txt2img", { ...QUICK, sampler_name: "dpmpp_2m_karras" });
    const normal = await post(server, "/sdapi/v1/txt2img", { ...QUICK, sampler_name: "DPM++ 2M" });
    const pixels = (answer: { json: { images: string[] } }) =>
      decodePng(Buffer.from(answer.json.images[0], "base64"), "").data;
    expect(pixels(legacy)).toEqual(pixels(karras));
    expect(pixels(ours)).toEqual(pixels(karras));
    expect(pixels(normal)).not.toEqual(pixels(karras));
    expect(JSON.parse(karras.json.info).infotexts[0]).toMatch(/Sampler: DPM\+\+ 2M, Schedule type: Karras,/);
  });

  it("8 concurrent txt2img requests get the images 8 sequential ones got, each its own", async () => {
    const body = (seed: number) => ({ prompt: seed % 2 ? "sloth" : "red apple", steps: 1, seed, sampler_name: "DDIM" });
    const seeds = [1, 2, 3, 4, 5, 6, 7, 8];
    const sequential: string[] = [];
    for (const seed of seeds) sequential.push((await post(server, "/sdapi/v1/txt2img", body(seed))).json.images[0]);
    const concurrent = await Promise.all(seeds.map((seed) => post(server, "/sdapi/v1/txt2img", body(seed))));
    expect(concurrent.map((r) => r.status)).toEqual(seeds.map(() => 200));
    expect(concurrent.map((r) => r.json.images[0])).toEqual(sequential);
    expect(new Set(sequential).size).toBe(8);
  });

  it("batch_size and n_iter: n_iter batches from seed, seed + batch_size, …", async () => {
    const { json } = await post(server, "/sdapi/v1/txt2img", { ...QUICK, steps: 1, batch_size: 2, n_iter: 2, seed: 7 });
    expect(json.images).toHaveLength(4);
    expect(JSON.parse(json.info).all_seeds).toEqual([7, 7, 9, 9]);
    const single = await post(server, "/sdapi/v1/txt2img", { ...QUICK, steps: 1, batch_size: 2, seed: 9 });
    expect(single.json.images).toEqual(json.images.slice(2));
  });

  it("img2img, and inpainting with a mask; png-info reads an answer's parameters", async () => {
    const init = (await post(server, "/sdapi/v1/txt2img", QUICK)).json.images[0] as string;
    const img2img = await post(server, "/sdapi/v1/img2img", {
      ...QUICK,
      init_images: [`data:image/png;base64,${init}`],
      denoising_strength: 0.5,
    });
    expect(img2img.status).toBe(200);
    expect(img2img.json.parameters).toMatchObject({ init_images: null, denoising_strength: 0.5 });
    expect(JSON.parse(img2img.json.info)).toMatchObject({ denoising_strength: 0.5 });
    const initPixels = decodePng(Buffer.from(init, "base64"), "init");
    const out = decodePng(Buffer.from(img2img.json.images[0], "base64"), "out");
    expect(out.data).not.toEqual(initPixels.data);

    // Left half kept (black), right half repainted (white).
    const mask = new Uint8ClampedArray(64 * 64 * 4);
    for (let p = 0; p < 64 * 64; p++)
      mask.fill(p % 64 >= 32 ? 255 : 0, 4 * p, 4 * p + 3).fill(255, 4 * p + 3, 4 * p + 4);
    const maskB64 = Buffer.from(encodePng({ width: 64, height: 64, data: mask })).toString("base64");
    const inpaint = await post(server, "/sdapi/v1/img2img", { ...QUICK, init_images: [init], mask: maskB64 });
    expect(inpaint.status).toBe(200);
    const painted = decodePng(Buffer.from(inpaint.json.images[0], "base64"), "inpaint");
    expect(painted.data).not.toEqual(initPixels.data);

    const wrongMask = Buffer.from(
      encodePng({ width: 32, height: 32, data: new Uint8ClampedArray(32 * 32 * 4) }),
    ).toString("base64");
    const mismatch = await post(server, "/sdapi/v1/img2img", { ...QUICK, init_images: [init], mask: wrongMask });
    expect(mismatch.status).toBe(422);
    expect(mismatch.json.detail[0].loc).toEqual(["body", "mask"]);

    const info = await post(server, "/sdapi/v1/png-info", { image: init });
    expect(info.status).toBe(200);
    expect(info.json.info).toContain("Seed: 42");
    expect(info.json.items).toMatchObject({ Software: "ldm.ts" });
    expect(info.json.parameters).toMatchObject({ Prompt: "red apple", Seed: "42", Steps: "3", "Size-1": "64" });
  });

  it("options: sd_model_checkpoint must name an offered model", async () => {
    const unknown = await post(server, "/sdapi/v1/options", { sd_model_checkpoint: "nope.safetensors" });
    expect(unknown.status).toBe(500);
    expect(unknown.json.detail).toMatch(/model "nope.safetensors" not found/);
    const known = await post(server, "/sdapi/v1/options", { sd_model_checkpoint: "emoji-ldm" });
    expect(known.status).toBe(200);
    const override = await post(server, "/sdapi/v1/txt2img", {
      ...QUICK,
      override_settings: { sd_model_checkpoint: "x" },
    });
    expect(override.status).toBe(404);
  });

  it("answers the malformed-request corpus with 413 / 422 / 404 and keeps serving", async () => {
    const corpus: [unknown, number, RegExp][] = [
      ['{"prompt": ', 422, /jsondecode/],
      ["[1, 2]", 422, /type_error.dict/],
      ['"just a string"', 422, /type_error.dict/],
      [{ steps: "many" }, 422, /"loc":\["body","steps"\].*not a valid integer/],
      [{ cfg_scale: [] }, 422, /"loc":\["body","cfg_scale"\]/],
      [{ width: 100 }, 422, /multiple of 8/],
      [{ width: -64 }, 422, /greater than or equal to 8/],
      [{ width: 4096, height: 4096 }, 422, /over this server's limit/],
      [{ steps: 100000 }, 422, /less than or equal to 150/],
      [{ batch_size: 1000 }, 422, /less than or equal to 8/],
      [{ seed: 1.5 }, 422, /"loc":\["body","seed"\]/],
      [{ sampler_name: "LMS" }, 404, /Sampler not found/],
      [{ scheduler: "bogus" }, 422, /"loc":\["body","scheduler"\].*unknown scheduler \\"bogus\\"/],
      [{ sampler_name: "DDIM", scheduler: "Karras" }, 422, /sampler ddim takes no schedule \\"karras\\"/],
      [{ enable_hr: true }, 422, /hires fix is not supported/],
      [{ alwayson_scripts: { ADetailer: { args: [] } } }, 422, /scripts are not supported/],
      [{ prompt: "x".repeat(2 ** 20) }, 413, /PayloadTooLarge/],
    ];
    for (const [body, status, message] of corpus) {
      const answer = await post(server, "/sdapi/v1/txt2img", body);
      expect([answer.status, JSON.stringify(answer.json)], JSON.stringify(body).slice(0, 60)).toEqual([
        status,
        expect.stringMatching(message),
      ]);
    }
    const huge = Buffer.from(encodePng({ width: 1, height: 1, data: new Uint8ClampedArray(4) }));
    huge.writeUInt32BE(100000, 16); // the header claims 100000 × 1 … then 100000 × 100000
    huge.writeUInt32BE(100000, 20);
    const img2img: [unknown, number, RegExp][] = [
      [{ prompt: "x" }, 404, /Init image not found/],
      [{ init_images: ["not base64 png"] }, 422, /init_images.*not a PNG/],
      [{ init_images: [huge.toString("base64")] }, 413, /100000×100000 is over/],
      [{ init_images: "one" }, 422, /type_error.list/],
    ];
    for (const [body, status, message] of img2img) {
      const answer = await post(server, "/sdapi/v1/img2img", body);
      expect([answer.status, JSON.stringify(answer.json)]).toEqual([status, expect.stringMatching(message)]);
    }
    expect((await post(server, "/sdapi/v1/png-info", { image: "AAAA" })).status).toBe(500);
    expect((await post(server, "/sdapi/v1/png-info", {})).status).toBe(422);
    const tooBig = await post(server, "/sdapi/v1/txt2img", { ...QUICK, width: 512, height: 512 });
    expect(tooBig.status).toBe(422);
    expect(tooBig.json.detail[0].msg).toMatch(/0.25 GiB/);
    expect((await get(server, "/sdapi/v1/nothing")).status).toBe(404);
    expect((await post(server, "/sdapi/v1/txt2img", { ...QUICK, steps: 1 })).status).toBe(200);
  });

  it("takes Open WebUI's A1111 call as it sends it", async () => {
    // The shape of open-webui/open-webui backend/open_webui/routers/images.py (image_generations, the
    // "automatic1111" engine): GET/POST /sdapi/v1/options for the model, then POST /sdapi/v1/txt2img with
    // prompt, batch_size, width, height, steps and negative_prompt; it reads `images` and json.loads(`info`).
    const options = (await get(server, "/sdapi/v1/options")).json();
    expect((await post(server, "/sdapi/v1/options", { sd_model_checkpoint: options.sd_model_checkpoint })).status).toBe(
      200,
    );
    const size = "64x64";
    const [width, height] = size.split("x").map(Number);
    const data = { prompt: "grinning face", batch_size: 2, width, height, steps: 2, negative_prompt: "blurry" };
    const { status, json } = await post(server, "/sdapi/v1/txt2img", data, { authorization: "" });
    expect(status).toBe(200);
    expect(json.images).toHaveLength(2);
    for (const image of json.images) expect(decodePng(Buffer.from(image, "base64"), "image").width).toBe(64);
    expect(JSON.parse(json.info)).toMatchObject({ prompt: "grinning face", negative_prompt: "blurry", batch_size: 2 });
  });

  it("sends no CORS headers unless origins are allowed", async () => {
    const answer = await get(server, "/sdapi/v1/sd-models", { origin: "http://elsewhere.example" });
    expect(answer.headers.get("access-control-allow-origin")).toBeNull();
  });
});

describe("ldm serve: one job at a time", () => {
  let server: LdmServer;
  beforeAll(async () => {
    server = await start({ queue: 1 });
  });

  it("interrupt mid-sampling ends the job with the last step's image; a full queue answers 503", async () => {
    // Live previews (off by default: each is a VAE decode) put the step's x̂₀ into /progress.
    const previews = { live_previews_enable: true, show_progress_every_n_steps: 1 };
    expect((await post(server, "/sdapi/v1/options", previews)).status).toBe(200);
    const long = post(server, "/sdapi/v1/txt2img", { ...QUICK, steps: 150 });
    const running = await waitProgress(server, (p) => p.state.sampling_step >= 2 && p.current_image !== null);
    expect(running.state).toMatchObject({ job_count: 1, sampling_steps: 150 });
    expect(running.progress).toBeGreaterThan(0.01);
    expect(running.eta_relative).toBeGreaterThan(0);
    expect(decodePng(Buffer.from(running.current_image ?? "", "base64"), "preview").width).toBe(64);
    const skipped = (await get(server, "/sdapi/v1/progress?skip_current_image=true")).json() as ProgressAnswer;
    expect(skipped.current_image).toBeNull();
    // One of two may wait (whichever arrives first); the other is turned away at once.
    const both = [5, 6].map((seed) => post(server, "/sdapi/v1/txt2img", { ...QUICK, steps: 1, seed }));
    const full = await Promise.race(both);
    expect(full.status).toBe(503);
    expect(full.json.detail).toMatch(/queue is full/);

    expect((await post(server, "/sdapi/v1/interrupt", {})).status).toBe(200);
    const interrupted = await long;
    expect(interrupted.status).toBe(200);
    expect(interrupted.json.images).toHaveLength(1);
    expect(decodePng(Buffer.from(interrupted.json.images[0], "base64"), "partial").width).toBe(64);
    const answers = await Promise.all(both);
    expect(answers.map((a) => a.status).sort()).toEqual([200, 503]);
    const after = answers.find((a) => a.status === 200);
    expect(JSON.parse(after?.json.info).all_seeds).toHaveLength(1);
  });

  it("a client that disconnects has its job stopped, and the server goes on", async () => {
    const req = httpRequest(`${server.url}/sdapi/v1/txt2img`, {
      method: "POST",
      headers: { "content-type": "application/json" },
    });
    req.on("error", () => {});
    req.end(JSON.stringify({ ...QUICK, steps: 150 }));
    await waitProgress(server, (p) => p.state.sampling_step >= 2);
    req.destroy();
    let lastStep = 0;
    await waitProgress(server, (p) => {
      if (p.state.job_count > 0) lastStep = p.state.sampling_step;
      return p.state.job_count === 0;
    });
    expect(lastStep).toBeLessThan(150);
    expect((await post(server, "/sdapi/v1/txt2img", { ...QUICK, steps: 1 })).status).toBe(200);
  });
});

describe("ldm serve: --api-auth and --cors-allow-origins", () => {
  let server: LdmServer;
  beforeAll(async () => {
    server = await start({ apiAuth: "alice:secret,bob:pw:with:colons", corsOrigins: ["http://ok.example"] });
  });
  const basic = (credentials: string) => ({ authorization: `Basic ${Buffer.from(credentials).toString("base64")}` });

  it("asks every route for HTTP basic credentials", async () => {
    for (const path of ["/sdapi/v1/sd-models", "/sdapi/v1/progress", "/openapi.json", "/docs/"]) {
      const none = await get(server, path);
      expect(none.status, path).toBe(401);
      expect(none.headers.get("www-authenticate")).toMatch(/^Basic/);
    }
    expect((await get(server, "/sdapi/v1/sd-models", basic("alice:wrong"))).status).toBe(401);
    expect((await get(server, "/sdapi/v1/sd-models", basic("carol:secret"))).status).toBe(401);
    expect((await get(server, "/sdapi/v1/sd-models", basic("alice:secret"))).status).toBe(200);
    expect((await get(server, "/sdapi/v1/sd-models", basic("bob:pw:with:colons"))).status).toBe(200);
    const generated = await post(server, "/sdapi/v1/txt2img", { ...QUICK, steps: 1 }, basic("alice:secret"));
    expect(generated.status).toBe(200);
  });

  it("answers allowed origins only", async () => {
    const allowed = await get(server, "/sdapi/v1/sd-models", { ...basic("alice:secret"), origin: "http://ok.example" });
    expect(allowed.headers.get("access-control-allow-origin")).toBe("http://ok.example");
    const other = await get(server, "/sdapi/v1/sd-models", { ...basic("alice:secret"), origin: "http://evil.example" });
    expect(other.headers.get("access-control-allow-origin")).toBeNull();
    // The preflight a browser sends before a credentialed POST carries no credentials.
    const preflight = await fetch(`${server.url}/sdapi/v1/txt2img`, {
      method: "OPTIONS",
      headers: {
        origin: "http://ok.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
      },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get("access-control-allow-origin")).toBe("http://ok.example");
    expect(preflight.headers.get("access-control-allow-methods")).toMatch(/POST/);
  });
});

/**
 * Where a network's GPU time goes, per op and shape: `pnpm bench:profile [--latent S] [--parts unet,vae]
 * [--dtype f32|f16] [--top N] [--model file.safetensors]`.
 *
 * Builds SD 1.5's UNet (batch 2, an S×S latent, 77 context tokens; the context's cross-attention keys and values
 * projected once beforehand, as a sampling run does) and VAE decoder (one S×S latent) with random weights, or
 * loads a checkpoint's networks (`--model`, its .yaml beside it: e.g. the built-in model at `--latent 16`), runs
 * each once to compile its kernels, then once under Device.profileDispatches (a timestamp pair per dispatch). Each dispatch is charged to the innermost module call running when it was recorded — convolutions,
 * norms, linears, attention, upsampling, found on the networks' own instances — named by op and shape, so a 3×3
 * convolution at 512² and one at 64² are separate rows. Rows give GPU ms, the share of the profiled total, and
 * GFLOP/s (or GB/s: one read and one write of the tensor) to compare with `pnpm bench:kernels`' table of the same
 * kernels. Every dispatch runs in a pass of its own here, which adds a per-pass cost the normal recording does
 * not pay; the "all" line also gives the unprofiled GPU time (Device.timeGpu) of the same call.
 * Benchmarks are not tests: nothing here asserts a time.
 */

import { basename, resolve } from "node:path";
import { conv2d } from "@ldm/kernels";
import type { Networks } from "@ldm/ldm";
import { loadModel } from "@ldm/ldm/node";
import { Conv2d, CrossAttention, GEGLU, GroupNorm, LayerNorm, Linear } from "@ldm/nn";
import { Device, DTYPE_BYTES, type ParamDType, Tensor } from "@ldm/tensor";
import { standardConfig } from "@ldm/weights";
import { Command, Option } from "commander";
import { positiveInt } from "./common.ts";
import { randomNetworks } from "./random-weights.ts";

const CLIP_TOKENS = 77;

const program = new Command()
  .option("--latent <S>", "latent side (64 = a 512×512 image)", positiveInt, 32)
  .option("--parts <list>", "networks to profile: unet, vae", "unet,vae")
  .addOption(new Option("--dtype <dtype>", "parameter and activation dtype").choices(["f16", "f32"]).default("f32"))
  .option("--top <N>", "rows printed per network", positiveInt, 40)
  .option("--gpu-time", "also time one unprofiled call (Device.timeGpu)", false)
  .option("--model <file>", "a checkpoint with its .yaml beside it instead of SD 1.5 with random weights");
program.parse();
const opts = program.opts<{
  latent: number;
  parts: string;
  dtype: ParamDType;
  top: number;
  gpuTime: boolean;
  model?: string;
}>();
const parts = opts.parts.split(",");
for (const p of parts) if (p !== "unet" && p !== "vae") throw new Error(`--parts: unknown network '${p}'`);
const S = opts.latent;

/** What a module call is charged as: a row name, and the work of one call (FLOPs, or bytes moved). */
interface Work {
  name: string;
  flops?: number;
  bytes?: number;
}

const shape = (t: Tensor) => `[${t.shape.join(", ")}]`;
const spatial = (t: Tensor) => t.shape.slice(2).join("×");
const bytesOf = (t: Tensor) => t.size * DTYPE_BYTES[t.dtype];

/** The innermost module call running while a dispatch is recorded; null outside every wrapped call. */
let current: Work | null = null;

/** Wraps `proto[method]` so that dispatches recorded inside a call are charged to `describe`'s row. */
function charge<T extends object>(
  proto: T,
  method: string,
  describe: (self: never, args: never, out: Tensor | undefined) => Work,
): void {
  const target = proto as Record<string, (...args: unknown[]) => unknown>;
  const original = target[method];
  if (typeof original !== "function") throw new Error(`profile: no method ${method} to wrap`);
  target[method] = function (this: never, ...args: unknown[]) {
    const outer = current;
    const work: Work = { name: "" };
    current = work;
    try {
      const out = original.apply(this, args);
      Object.assign(work, describe(this, args as never, out instanceof Tensor ? out : undefined));
      return out;
    } finally {
      current = outer;
    }
  };
}

charge(Conv2d.prototype, "forward", (self: Conv2d, [x]: Tensor[], out) => {
  const [cout, cin, kh, kw] = self.weight.shape;
  const [b, , ho, wo] = out?.shape ?? [0, 0, 0, 0];
  const stride = self.cfg.stride ?? 1;
  return {
    name: `conv ${kh}×${kw}${stride > 1 ? `/${stride}` : ""} ${cin}→${cout} @ ${spatial(x)}${b > 1 ? ` ×${b}` : ""}`,
    flops: 2 * b * cout * ho * wo * cin * kh * kw,
  };
});
for (const method of ["forwardToTokens", "forwardFromTokens"]) {
  charge(Conv2d.prototype, method, (self: Conv2d, _args: Tensor[], out) => {
    const [cout, cin] = self.weight.shape;
    const pixels = out ? out.size / cout : 0;
    return { name: `conv 1×1 ${method} ${cin}→${cout}, ${pixels} px`, flops: 2 * pixels * cin * cout };
  });
}
charge(GroupNorm.prototype, "forward", (_self: GroupNorm, [x, o]: [Tensor, { silu?: boolean; shift?: Tensor }?]) => ({
  name: `group norm${o?.silu ? " + SiLU" : ""}${o?.shift ? " + shift" : ""} ${shape(x)}`,
  bytes: 2 * bytesOf(x),
}));
charge(LayerNorm.prototype, "forward", (_self: LayerNorm, [x]: Tensor[]) => ({
  name: `layer norm ${shape(x)}`,
  bytes: 2 * bytesOf(x),
}));
charge(Linear.prototype, "forward", (self: Linear, [x]: Tensor[]) => {
  const [n, k] = self.weight.shape;
  const m = x.size / k;
  return { name: `linear ${m}×${n}×${k}`, flops: 2 * m * n * k };
});
charge(GEGLU.prototype, "forward", (self: GEGLU, [x]: Tensor[]) => {
  const [n, k] = self.proj.weight.shape;
  const m = x.size / k;
  return { name: `linear GEGLU ${m}×${n}×${k}`, flops: 2 * m * n * k };
});
// CrossAttention's own dispatches (its projections are Linears) are the attention kernel's.
type AttentionOptions = { context?: Tensor; kv?: { k: Tensor } };
charge(CrossAttention.prototype, "forward", (self: CrossAttention, [x, o]: [Tensor, AttentionOptions?]) => {
  const heads = self.cfg.heads;
  const inner = self.to_q.weight.shape[0];
  const [b, nq] = x.shape;
  const nk = (o?.kv?.k ?? o?.context ?? x).shape[1];
  return {
    name: `attention ${nq}×${nk}, ${heads} heads × ${inner / heads}${b > 1 ? ` ×${b}` : ""}`,
    flops: 4 * b * nq * nk * inner,
  };
});

/** Wraps the VAE's and UNet's own classes (not exported), found on the built networks' instances. */
function chargeNetworkClasses(networks: Networks): void {
  const decoder = networks.vae?.decoder;
  const attn = decoder?.mid.attn_1;
  if (attn) {
    // The VAE's single-head AttnBlock: its own dispatches are the attention's (q, k, v, proj_out are Conv2ds).
    charge(Object.getPrototypeOf(attn), "forward", (_self: never, [x]: Tensor[]) => {
      const [b, c, h, w] = x.shape;
      return { name: `attention (VAE, 1 head × ${c}) ${h * w} tokens`, flops: 4 * b * (h * w) ** 2 * c };
    });
  }
  const upsample = decoder?.up.find((level) => level.upsample)?.upsample;
  if (upsample) {
    // Upsample's own dispatches (its conv is a Conv2d) are the nearest-neighbour copy; the UNet shares the class.
    charge(Object.getPrototypeOf(upsample), "forward", (_self: never, [x]: Tensor[]) => ({
      name: `upsample nearest ×2 ${shape(x)}`,
      bytes: 5 * bytesOf(x),
    }));
  }
}

interface Row extends Work {
  ms: number;
  dispatches: number;
  calls: number;
}

/** Profiles one call of `record`, printing its rows; `label` names the network. */
async function profile(device: Device, label: string, record: () => void): Promise<void> {
  record(); // compiles every kernel first
  await device.sync();
  const gpuMs = opts.gpuTime ? await device.timeGpu(record) : null;
  const calls: Work[] = [];
  const owner: Work[] = [];
  const dispatch = device.dispatch.bind(device);
  device.dispatch = (d) => {
    const [x, y = 1, z = 1] = d.workgroups;
    if (x * y * z > 0) {
      const work = current ?? { name: `(${d.pipeline.label.split(":")[0]})` };
      if (!calls.includes(work)) calls.push(work);
      owner.push(work);
    }
    dispatch(d);
  };
  let dispatches: { label: string; ms: number }[] | null;
  try {
    dispatches = await device.profileDispatches(record);
  } finally {
    device.dispatch = dispatch;
  }
  if (!dispatches) throw new Error("profile: this adapter has no timestamp-query");
  if (dispatches.length !== owner.length) throw new Error("profile: dispatches and their owners do not line up");
  const rows = new Map<string, Row>();
  const seen = new Set<Work>();
  dispatches.forEach(({ ms }, i) => {
    const work = owner[i];
    const name = work.name || "(unnamed)";
    const row = rows.get(name) ?? { name, ms: 0, dispatches: 0, calls: 0, flops: 0, bytes: 0 };
    row.ms += ms;
    row.dispatches++;
    if (!seen.has(work)) {
      seen.add(work);
      row.calls++;
      row.flops = (row.flops ?? 0) + (work.flops ?? 0);
      row.bytes = (row.bytes ?? 0) + (work.bytes ?? 0);
    }
    rows.set(name, row);
  });
  const total = dispatches.reduce((s, d) => s + d.ms, 0);
  const sorted = [...rows.values()].sort((a, b) => b.ms - a.ms);
  const rate = (r: Row) =>
    r.flops
      ? `${(r.flops / r.ms / 1e6).toFixed(1)} GFLOP/s`
      : r.bytes
        ? `${(r.bytes / r.ms / 1e6).toFixed(2)} GB/s`
        : "";
  const flops = sorted.reduce((s, r) => s + (r.flops ?? 0), 0);
  console.log(`\n### ${label}\n`);
  console.log(
    `profiled: ${dispatches.length} dispatches, ${total.toFixed(0)} ms summed${gpuMs === null ? "" : ` (unprofiled GPU time ${gpuMs.toFixed(0)} ms)`}, ` +
      `${(flops / 1e9).toFixed(0)} GFLOP counted: ${(flops / total / 1e6).toFixed(1)} GFLOP/s overall\n`,
  );
  console.log("| op and shape | calls | dispatches | ms | share | rate |\n|---|---:|---:|---:|---:|---:|");
  for (const r of sorted.slice(0, opts.top)) {
    const share = ((100 * r.ms) / total).toFixed(1);
    console.log(`| ${r.name} | ${r.calls} | ${r.dispatches} | ${r.ms.toFixed(1)} | ${share}% | ${rate(r)} |`);
  }
  // By op family: the row name up to its shape.
  const families = new Map<string, number>();
  for (const r of sorted) {
    const family = r.name.replace(/ [[@\d(].*$/, "").replace(/ \d+→\d+.*$/, "");
    families.set(family, (families.get(family) ?? 0) + r.ms);
  }
  console.log("\n| op family | ms | share |\n|---|---:|---:|");
  for (const [family, ms] of [...families].sort((a, b) => b[1] - a[1])) {
    console.log(`| ${family} | ${ms.toFixed(1)} | ${((100 * ms) / total).toFixed(1)}% |`);
  }
}

const device = await Device.create({ disableF16: opts.dtype !== "f16" });
const components = parts.includes("vae") ? (["unet", "vae"] as const) : (["unet"] as const);
const checkpoint = opts.model && resolve(process.env.INIT_CWD ?? process.cwd(), opts.model);
const networks = checkpoint
  ? await loadModel(checkpoint, {
      device,
      dtype: opts.dtype,
      config: checkpoint.replace(/\.safetensors$/, ".yaml"),
      components,
    })
  : await randomNetworks(device, standardConfig("sd1"), opts.dtype, components);
const config = networks.config;
const modelName = opts.model ? basename(opts.model) : "SD 1.5 with random weights";
console.log(`adapter: ${device.describe()}; ${modelName}, ${opts.dtype}, ${S}×${S} latent`);
chargeNetworkClasses(networks);
const { unet, vae } = networks;
const pseudo = (n: number, f: (i: number) => number) => Float32Array.from({ length: n }, (_, i) => f(i));

{
  // The kernel table's conv2d row (pnpm bench:kernels), profiled the same way in this process: the rate the
  // networks' rows are to be compared with, whatever the machine's load.
  const x = Tensor.from(device, pseudo(320 * 64 * 64, Math.cos), [1, 320, 64, 64], opts.dtype);
  const w = Tensor.from(
    device,
    pseudo(320 * 320 * 9, (i) => Math.sin(i) * 0.05),
    [320, 320, 3, 3],
    opts.dtype,
  );
  const row: Work = { name: "conv 3×3 320→320 @ 64×64", flops: 2 * 320 * 320 * 9 * 64 * 64 };
  await profile(device, "the kernel table's row", () => {
    current = row;
    try {
      conv2d(x, w, { padding: 1 }).dispose();
    } finally {
      current = null;
    }
  });
  for (const t of [x, w]) t.dispose();
}
if (parts.includes("unet")) {
  if (!unet) throw new Error("internal: the UNet was not built");
  const contextDim = config.unet.context_dim;
  if (contextDim === undefined) throw new Error("profile: the UNet has no cross-attention (context_dim)");
  const c = config.unet.in_channels;
  const x = Tensor.from(device, pseudo(2 * c * S * S, Math.cos), [2, c, S, S]);
  const timesteps = Tensor.from(device, [500, 500], [2]);
  const context = Tensor.from(
    device,
    pseudo(2 * CLIP_TOKENS * contextDim, (i) => Math.sin(i) * 0.5),
    [2, CLIP_TOKENS, contextDim],
  );
  // As a sampling run calls it: the context's cross-attention keys and values projected once, before.
  const projected = unet.projectContext(context);
  await profile(device, `${modelName}: UNet, batch 2 @ ${S}×${S} latent`, () =>
    unet.forward({ x, timesteps, context, projected }).dispose(),
  );
  projected.dispose();
  for (const t of [x, timesteps, context]) t.dispose();
}
if (parts.includes("vae")) {
  if (!vae) throw new Error("internal: the VAE was not built");
  const z = Tensor.from(
    device,
    pseudo(config.vae.embed_dim * S * S, (i) => Math.sin(i * 0.37)),
    [1, config.vae.embed_dim, S, S],
  );
  await profile(device, `${modelName}: VAE decode @ ${S}×${S} latent`, () => vae.decode(z).dispose());
  z.dispose();
}
networks.dispose();
device.destroy();
process.exit(0);

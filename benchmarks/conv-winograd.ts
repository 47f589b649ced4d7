/**
 * 3×3 convolutions by the direct kernel and by Winograd F(4×4, 3×3), interleaved in one process:
 * `cd benchmarks && node --import tsx conv-winograd.ts [CinxCout@S[xB],…]` (default: the VAE's and UNet's
 * classes). Per call: GPU ms (timestamps) and, what a shared machine cannot disturb, the FLOPs of the direct
 * convolution per second of CPU time of lavapipe's threads (every thread but the main one, from
 * /proc/self/task/<tid>/schedstat), median of 3 rounds (`--rounds n`). Winograd's figure is "effective": the
 * direct count over its own time. `--profile`: instead, the Winograd call's GPU time per kernel (weight transform,
 * input transform, the batched GEMMs, output transform; Device.profileGpu, each dispatch in a pass of its own) and
 * its dispatch count. `--layouts`: Winograd's batched GEMMs channel-major (U · V, the B of each position read from storage)
 * against tile-major with the weights read through uniform windows (windowedTileMajorTiles, forced; the heuristic
 * takes it only for very few tiles, from storage), interleaved as
 * direct and Winograd are otherwise. `--transform`: also Winograd with the weights transformed in every call (a
 * second device whose transformed-weight cache is off, setWinogradCacheBudget 0); "winograd" keeps them across calls
 * as conv2d does by default. `--tiles key,…` (tiles.ts's tileKey form): Winograd with its batched GEMMs on these
 * tiles as further variants (uniformB ones tile-major, others channel-major), e.g. the heuristic's tiles of
 * another version. Linux only. Benchmarks are not tests: nothing here asserts a time.
 */
import { readFileSync } from "node:fs";
import { conv2d, deviceTiles, setWinogradCacheBudget, windowedTileMajorTiles } from "@ldm/kernels";
import { Device, type Tensor } from "@ldm/tensor";
import { convOperands, parseGemmTiles, workerCpuNs } from "./common.ts";

/** conv2d's internals (algorithm, tiles), which the package does not export by name. */
type Conv2dInternals = NonNullable<Parameters<typeof conv2d>[3]>;

const device = await Device.create({ disableF16: true });
const args = process.argv.slice(2);
const profileOnly = args.includes("--profile");
const layouts = args.includes("--layouts");
const uncached = args.includes("--transform") ? await Device.create({ disableF16: true }) : null;
if (uncached) setWinogradCacheBudget(uncached, 0);
const roundsAt = args.indexOf("--rounds");
const rounds = roundsAt < 0 ? 3 : Number(args.splice(roundsAt, 2)[1]);
const tilesAt = args.indexOf("--tiles");
const forced =
  tilesAt < 0
    ? []
    : args
        .splice(tilesAt, 2)[1]
        .split(",")
        .map((key) => ({ key, tiles: parseGemmTiles(key) }));
const shapes = (
  args.find((a) => !a.startsWith("--")) ??
  "128x128@128,256x256@64,512x512@32,320x320@64x2,640x640@32x2,1280x1280@16x2,1280x1280@8x2"
).split(",");
for (const s of shapes) {
  const [ch, where] = s.split("@");
  const [side, batchText] = where.split("x");
  const B = Number(batchText ?? 1);
  const [cin, cout] = ch.split("x").map(Number);
  const S = Number(side);
  const [x, w] = convOperands(device, B, cin, cout, S);
  const [ux, uw] = uncached ? convOperands(uncached, B, cin, cout, S) : [];
  const flops = 2 * B * cout * cin * 9 * S * S;
  const load = () => readFileSync("/proc/loadavg", "utf8").split(" ")[0];
  if (profileOnly) {
    const call = () => conv2d(x, w, { padding: 1 }, { algorithm: "winograd" }).dispose();
    call();
    const kernels = (await device.profileGpu(call)) ?? [];
    const total = kernels.reduce((t, k) => t + k.ms, 0);
    const rows = kernels.map(
      (k) => `${k.label.split(":")[0]} ×${k.dispatches} ${k.ms.toFixed(0)} ms (${((100 * k.ms) / total).toFixed(1)}%)`,
    );
    console.log(`conv 3×3 ${cin}→${cout} @ ${S}² ×${B} by Winograd: ${rows.join(", ")}; load ${load()}`);
    x.dispose();
    w.dispose();
    continue;
  }
  // The channel-major GEMMs' own tiles (their rows are output channels), without windows: the GEMMs as they
  // were before the tile-major layout.
  const channelMajor = deviceTiles(device, {
    M: cout,
    N: B * (S / 4) ** 2,
    K: cin,
    transposeA: false,
    transposeB: false,
  });
  // Tile-major GEMMs reading U through windows, as windowedTileMajorTiles makes them for the whole image's tiles.
  const tileProblem = { M: B * (S / 4) ** 2, N: cout, K: cin, windowSets: 36 };
  const tileMajor = windowedTileMajorTiles(
    deviceTiles(device, { ...tileProblem, transposeA: false, transposeB: true }),
    tileProblem,
  );
  if (layouts && !tileMajor)
    console.log(`conv ${cin}→${cout} @ ${S}² ×${B}: no windowed tile-major tiles (heuristic's)`);
  const variants: Record<string, Conv2dInternals> = {
    ...(layouts
      ? {
          "channel-major": {
            algorithm: "winograd",
            gemmTiles: channelMajor.kind === "subgroup" ? { ...channelMajor, uniformB: false } : channelMajor,
          },
          "tile-major": { algorithm: "winograd", gemmTiles: tileMajor ?? undefined },
        }
      : { direct: { algorithm: "direct" }, winograd: { algorithm: "winograd" } }),
    ...Object.fromEntries(forced.map(({ key, tiles }) => [key, { algorithm: "winograd", gemmTiles: tiles }])),
  };
  if (uncached) variants["winograd transforming"] = { algorithm: "winograd" };
  const names = Object.keys(variants);
  /** The variant's device and operands: the cache-less device's for "winograd transforming". */
  const on = (name: string): [Device, Tensor, Tensor] =>
    name === "winograd transforming" && uncached && ux && uw ? [uncached, ux, uw] : [device, x, w];
  const res: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  const wall: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (const name of names) {
    const [dev, vx, vw] = on(name);
    conv2d(vx, vw, { padding: 1 }, variants[name]).dispose();
    await dev.sync();
  }
  for (let r = 0; r < rounds; r++) {
    for (const name of names) {
      const [dev, vx, vw] = on(name);
      const c0 = workerCpuNs();
      const t0 = performance.now();
      const ms = await dev.timeGpu(() => conv2d(vx, vw, { padding: 1 }, variants[name]).dispose());
      res[name].push(flops / (workerCpuNs() - c0));
      wall[name].push(ms ?? performance.now() - t0);
    }
  }
  const med = (a: number[]) => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)];
  const rates = names.map((n) => `${n} ${med(res[n]).toFixed(1)} GFLOP/CPU-s (gpu ${med(wall[n]).toFixed(0)} ms)`);
  console.log(`conv 3×3 ${cin}→${cout} @ ${S}² ×${B}: ${rates.join(", ")}; load ${load()}`);
  for (const t of [x, w, ux, uw]) t?.dispose();
}
device.destroy();
uncached?.destroy();
process.exit(0);

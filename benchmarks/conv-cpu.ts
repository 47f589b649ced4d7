/**
 * Direct convolutions on a CPU adapter with the heuristic's tiles and given ones, interleaved in one process:
 * `cd benchmarks && node --import tsx conv-cpu.ts [CinxCout@S[xB][s2],…] [--tiles key,key…] [--rounds n]`. A shape
 * is a 3×3 convolution with padding 1 over B images of S × S (stride 2 with `s2`, as a Downsample); the default is
 * the built-in model's 8×8 and 4×4 levels and SD 1.5's 8×8 one. Tiles are `sg<lanes>x<subgroups>r<rows>g<groups>`
 * (conv2d/wgsl.ts's subgroup tiles). Per call: the FLOPs per second of CPU time of lavapipe's threads (every thread
 * but the main one) and per second of GPU time (timestamps), medians over the rounds. The GPU figure is what idle
 * threads cost, which CPU time does not count: read it on a quiet machine. Linux only; nothing here asserts a time.
 */
import { readFileSync } from "node:fs";
import { conv2d } from "@ldm/kernels";
import { Device } from "@ldm/tensor";
import { convOperands, interleavedRates } from "./common.ts";

type SubgroupConvTiles = { kind: "subgroup"; lanes: number; subgroups: number; rows: number; groups: number };

function parseTiles(key: string): SubgroupConvTiles {
  const m = /^sg(\d+)x(\d+)r(\d+)g(\d+)$/.exec(key);
  if (!m) throw new Error(`conv-cpu: --tiles ${key} is not a subgroup conv tile key like sg8x4r16g2`);
  const [lanes, subgroups, rows, groups] = [1, 2, 3, 4].map((i) => Number(m[i]));
  return { kind: "subgroup", lanes, subgroups, rows, groups };
}

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args.splice(i, 2)[1];
};
const extra = (flag("--tiles") ?? "").split(",").filter(Boolean);
const rounds = Number(flag("--rounds") ?? 5);
const shapes = (args[0] ?? "64x128@8x2,128x128@8x2,128x128@4x2,256x128@4x2,128x128@8x2s2,1280x1280@8x2").split(",");
const device = await Device.create({ disableF16: true });
const load = () => readFileSync("/proc/loadavg", "utf8").split(" ")[0];

for (const s of shapes) {
  const m = /^(\d+)x(\d+)@(\d+)(?:x(\d+))?(s2)?$/.exec(s);
  if (!m) throw new Error(`conv-cpu: shape ${s} is not CinxCout@S[xB][s2]`);
  const [cin, cout, S] = [1, 2, 3].map((i) => Number(m[i]));
  const B = Number(m[4] ?? 1);
  const stride = m[5] ? 2 : 1;
  const [x, w] = convOperands(device, B, cin, cout, S);
  const So = Math.floor((S + 2 - 3) / stride) + 1;
  const flops = 2 * B * cout * cin * 9 * So * So;
  const variants = [
    { name: "heuristic", tiles: undefined },
    ...extra.map((key) => ({ name: key, tiles: parseTiles(key) })),
  ];
  const runs = variants.map(({ tiles }) => ({
    device,
    run: () => conv2d(x, w, { padding: 1, stride }, { algorithm: "direct", tiles }).dispose(),
  }));
  for (const r of runs) r.run();
  await device.sync();
  const load0 = load();
  const rates = await interleavedRates(runs, flops, rounds);
  for (const [i, v] of variants.entries()) {
    console.log(
      `conv 3×3 ${cin}→${cout} @ ${S}² ×${B}${stride === 2 ? " stride 2" : ""} ${v.name}: ${rates[i].cpu.toFixed(1)} GFLOP/CPU-s, ${rates[i].gpu.toFixed(1)} GFLOP/s; load ${load0} → ${load()}`,
    );
  }
  x.dispose();
  w.dispose();
}
device.destroy();
process.exit(0);

import { describe, expect, it } from "vitest";
import { Tensor, Uniforms } from "../src/index.ts";
import { useDevice } from "../src/testing.ts";

const device = await useDevice();

// out[i] = x[i] · scale + y[i]: a kernel with a uniform and two storage inputs, enough to chain intermediates.
const AXPY = `
struct Params { n: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x < p.n) { out[id.x] = x[id.x] * p.scale + y[id.x]; }
}`;

function axpy(x: Tensor, scale: number, y: Tensor): Tensor {
  const out = Tensor.empty(device, x.shape);
  device.dispatch({
    pipeline: device.pipeline("test-record-axpy", () => AXPY),
    buffers: [x.buffer, y.buffer, out.buffer],
    uniforms: new Uniforms().u32(x.size).f32(scale).bytes(),
    workgroups: [Math.ceil(x.size / 64)],
  });
  return out;
}

/** (x · 2 + y) · 3 + (x · 0.5 + y), through two intermediates freed inside. */
function chain(x: Tensor, y: Tensor): Tensor {
  return device.tidy(() => axpy(axpy(x, 2, y), 3, axpy(x, 0.5, y)));
}

const N = 300;
const values = (seed: number) => Float32Array.from({ length: N }, (_, i) => Math.sin(i * seed) * 10);

describe("Device.record and Recording.run", () => {
  it("replays a call on new input values with the bits of running it again, and gives its buffers back", async () => {
    const x = Tensor.from(device, values(1), [N]);
    const y = Tensor.from(device, values(2), [N]);
    const liveBefore = device.memory().liveBytes;
    const { result: out, recording } = device.record(() => chain(x, y));
    if (!recording) throw new Error("expected a recording");
    expect(recording.dispatches).toBe(3);
    // The two intermediates stay the recording's: out of the pool, as live bytes.
    expect(device.memory().liveBytes - liveBefore).toBe(3 * out.buffer.size);
    const first = await out.read();
    for (const seed of [3, 4]) {
      device.write(x.buffer, 0, values(seed));
      device.write(y.buffer, 0, values(seed + 10));
      recording.run();
      const replayed = await out.read();
      const fresh = chain(x, y);
      expect(replayed).toEqual(await fresh.read());
      expect(replayed).not.toEqual(first);
      fresh.dispose();
    }
    recording.dispose();
    recording.dispose();
    out.dispose();
    expect(device.memory().liveBytes).toBe(liveBefore);
    expect(() => recording.run()).toThrow(/was disposed/);
    x.dispose();
    y.dispose();
  });

  it("refuses to run once a tensor it used from outside was disposed, even if its buffer went to another tensor", () => {
    const x = Tensor.from(device, values(1), [N]);
    const y = Tensor.from(device, values(2), [N]);
    const { result: out, recording } = device.record(() => chain(x, y));
    if (!recording) throw new Error("expected a recording");
    const yBuffer = y.buffer;
    y.dispose();
    expect(() => recording.run()).toThrow(/was disposed since/);
    // Tensors of y's size until the pool hands y's buffer out again: live, but no longer y's.
    const takers: Tensor[] = [];
    while (takers.at(-1)?.buffer !== yBuffer && takers.length < 64) takers.push(Tensor.empty(device, [N]));
    expect(takers.at(-1)?.buffer).toBe(yBuffer);
    expect(() => recording.run()).toThrow(/was disposed since/);
    for (const t of [...takers, out, x]) t.dispose();
    recording.dispose();
  });

  it("makes no recording of a call that writes host data or frees a tensor made before it, and says why", async () => {
    const x = Tensor.from(device, values(1), [N]);
    const y = Tensor.from(device, values(2), [N]);
    const writes = device.record(() => device.tidy(() => axpy(Tensor.from(device, values(5), [N]), 1, y)));
    expect(writes.recording).toBeNull();
    expect(writes.notReplayable).toMatch(/writes host data/);
    // Its result is still the call's.
    const expected = values(5).map((v, i) => Math.fround(v + values(2)[i]));
    expect(await writes.result.read()).toEqual(expected);
    const consumed = device.record(() => {
      const out = axpy(x, 1, y);
      x.dispose();
      return out;
    });
    expect(consumed.recording).toBeNull();
    expect(consumed.notReplayable).toMatch(/reads a tensor made before it and frees it/);
    for (const t of [writes.result, consumed.result, y]) t.dispose();
  });

  it("does not nest, and leaves the device recording nothing after a throw", () => {
    const x = Tensor.from(device, values(1), [N]);
    expect(() => device.record(() => device.record(() => axpy(x, 1, x)))).toThrow(/do not nest/);
    expect(() =>
      device.record(() => {
        throw new Error("inside");
      }),
    ).toThrow(/inside/);
    const { result, recording } = device.record(() => axpy(x, 1, x));
    expect(recording?.dispatches).toBe(1);
    recording?.dispose();
    result.dispose();
    x.dispose();
  });
});

import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { gridImage, maskFromImage, pixelsToRgba, resizeNearest, rgbaToPixels } from "../src/image/pixels.ts";
import { decodeLabelPng, decodePng, encodePng, type RgbaImage } from "../src/image/png.ts";
import {
  type GenerationParameters,
  PARAMETERS_KEYWORD,
  parametersText,
  parseParameters,
} from "../src/pipeline/parameters.ts";

// Fixture: fixtures/images/make_image_fixtures.py — PNGs written by PIL 9.4 with the RGBA PIL decodes them to,
// PIL's convert("L") luma, and torch 1.13's nearest interpolate.
const FIXTURES = new URL("./fixtures/images/", import.meta.url);
const expected: {
  size: [number, number];
  png: Record<string, { mode: string; rgba: string; labels?: number[] }>;
  luma: { rgb: number[]; l: number[] };
  resize: { in: [number, number]; out: [number, number]; plane: number[]; expected: number[] }[];
} = JSON.parse(readFileSync(new URL("expected.json", FIXTURES), "utf8"));

describe("PNG decoding", () => {
  it.each(Object.keys(expected.png))("%s decodes to the RGBA PIL gives", (name) => {
    const image = decodePng(readFileSync(new URL(`${name}.png`, FIXTURES)), name);
    expect([image.width, image.height]).toEqual(expected.size);
    expect(Buffer.from(image.data).toString("base64")).toBe(expected.png[name].rgba);
  });

  it("round-trips RGBA and tEXt through our encoder", () => {
    const image: RgbaImage = { width: 3, height: 2, data: Uint8ClampedArray.from({ length: 24 }, (_, i) => i * 10) };
    const back = decodePng(encodePng(image, { Comment: "hello" }), "round trip");
    expect(back.data).toEqual(image.data);
    expect(back.text).toEqual({ Comment: "hello" });
  });

  it("names what is wrong with a file that is not a PNG", () => {
    expect(() => decodePng(Uint8Array.from([0xff, 0xd8, 0xff, 0xe0, 0, 0]), "init image a.jpg")).toThrow(
      "init image a.jpg is not a PNG (it looks like a JPEG); only PNG images are read",
    );
    const truncated = readFileSync(new URL("rgb8.png", FIXTURES)).subarray(0, 40);
    expect(() => decodePng(truncated, "mask m.png")).toThrow(/^mask m.png: unreadable PNG/);
    expect(() => encodePng({ width: 2, height: 2, data: new Uint8ClampedArray(15) })).toThrow(
      "image 2×2 needs 16 RGBA bytes, got 15",
    );
  });
});

describe("segmentation maps (decodeLabelPng)", () => {
  it.each(["l8", "l1", "l16", "p2", "p8-trns"])(
    "%s: the class ids are what np.array(Image.open(png)) reads",
    (name) => {
      const map = decodeLabelPng(readFileSync(new URL(`${name}.png`, FIXTURES)), name);
      expect([map.width, map.height]).toEqual(expected.size);
      expect(Array.from(map.labels)).toEqual(expected.png[name].labels);
    },
  );

  it.each([
    ["rgb8", /rgb8 is an RGB PNG: a segmentation map is an index PNG .* or a palette PNG/],
    ["rgba8", /rgba8 is an RGBA PNG/],
    ["la8", /la8 is a greyscale\+alpha PNG/],
  ])("refuses a colour or alpha PNG (%s): a colour names no class", (name, message) => {
    expect(() => decodeLabelPng(readFileSync(new URL(`${name}.png`, FIXTURES)), name)).toThrow(message);
  });
});

describe("generation parameters in tEXt", () => {
  const parameters: GenerationParameters = {
    prompt: "an astronaut 🚀 riding a horse, « café » — 東京",
    negativePrompt: "blurry\nlow quality",
    seed: "18446744073709551615",
    sampler: "dpmpp_2m_karras",
    steps: 20,
    guidanceScale: 7.5,
    eta: 0,
    width: 512,
    height: 768,
    batchSize: 2,
    batchIndex: 1,
    model: "v1-5-pruned-emaonly.safetensors",
    dtype: "f16",
    strength: 0.6,
    initImage: "in.png",
  };

  it("survive a PNG round trip exactly, any Unicode included (tEXt itself holds Latin-1 only)", () => {
    const text = parametersText(parameters);
    expect(text).toMatch(/^[\x20-\x7e]*$/);
    const image: RgbaImage = { width: 1, height: 1, data: new Uint8ClampedArray(4) };
    const back = decodePng(encodePng(image, { [PARAMETERS_KEYWORD]: text }), "x");
    expect(parseParameters(back.text[PARAMETERS_KEYWORD], "x.png")).toEqual(parameters);
  });

  it("reject malformed parameters by name", () => {
    expect(() => parseParameters("{", "a.png")).toThrow(/^a.png: the ldm-parameters text is not JSON/);
    const bad = (change: Record<string, unknown>) => JSON.stringify({ ...parameters, ...change });
    expect(() => parseParameters(bad({ steps: "20" }), "a.png")).toThrow(
      'a.png: parameter "steps" is "20", not a number',
    );
    expect(() => parseParameters(bad({ sampler: "lms" }), "a.png")).toThrow(
      /a.png: unknown sampler "lms"; one of ddpm, ddim/,
    );
  });
});

describe("pixels and masks", () => {
  it("RGBA → [−1, 1] float pixels (alpha dropped) → RGBA round-trips every byte", () => {
    const data = Uint8ClampedArray.from({ length: 256 * 4 }, (_, i) => (i % 4 === 3 ? 7 : (i * 37) % 256));
    const image = { width: 16, height: 16, data };
    const pixels = rgbaToPixels([image, image]);
    expect(pixels.length).toBe(2 * 3 * 256);
    expect(Math.min(...pixels)).toBeGreaterThanOrEqual(-1);
    expect(pixels[0]).toBe(Math.fround(2 * Math.fround(data[0] / 255) - 1));
    expect(pixels[256]).toBe(Math.fround(2 * Math.fround(data[1] / 255) - 1));
    const [back] = pixelsToRgba(pixels.subarray(0, 768), [1, 3, 16, 16]);
    expect(back.data.filter((_, i) => i % 4 !== 3)).toEqual(data.filter((_, i) => i % 4 !== 3));
    expect(back.data.filter((_, i) => i % 4 === 3).every((a) => a === 255)).toBe(true);
  });

  it("clamps decoded pixels outside [−1, 1] and rounds", () => {
    const [image] = pixelsToRgba(Float32Array.from([-3, 0, 2, 0.5, 1, -1]), [1, 3, 1, 2]);
    // Channel planes: R = [−3, 0], G = [2, 0.5], B = [1, −1].
    expect(Array.from(image.data)).toEqual([0, 255, 255, 255, 128, 191, 0, 255]);
  });

  it("mask luma is PIL's convert('L'), binarised at 0.5 (1 = repaint)", () => {
    const { rgb, l } = expected.luma;
    const pixels = rgb.length / 3;
    const data = new Uint8ClampedArray(pixels * 4);
    for (let p = 0; p < pixels; p++) data.set([rgb[3 * p], rgb[3 * p + 1], rgb[3 * p + 2], 0], 4 * p);
    const mask = maskFromImage({ width: pixels, height: 1, data });
    expect(Array.from(mask)).toEqual(l.map((v) => (v / 255 >= 0.5 ? 1 : 0)));
    // Grey 127 keeps, 128 repaints.
    const greys = maskFromImage({
      width: 2,
      height: 1,
      data: Uint8ClampedArray.from([127, 127, 127, 255, 128, 128, 128, 255]),
    });
    expect(Array.from(greys)).toEqual([0, 1]);
  });

  it.each(expected.resize.map((r) => [`${r.in.join("×")} → ${r.out.join("×")}`, r] as const))(
    "nearest resize %s equals torch's interpolate",
    (_, r) => {
      const out = resizeNearest(Float32Array.from(r.plane), r.in[0], r.in[1], r.out[0], r.out[1]);
      expect(Array.from(out)).toEqual(r.expected);
    },
  );
});

describe("gridImage", () => {
  const solid = (width: number, height: number, value: number): RgbaImage => ({
    width,
    height,
    data: new Uint8ClampedArray(width * height * 4).fill(value),
  });

  it("places rows[r][c] at row r, column c, and leaves a short row's end white", () => {
    const grid = gridImage([[solid(3, 2, 10), solid(3, 2, 20)], [solid(3, 2, 30)]]);
    expect([grid.width, grid.height]).toEqual([6, 4]);
    const at = (x: number, y: number) => grid.data[(y * grid.width + x) * 4];
    expect([at(0, 0), at(2, 1), at(3, 0), at(5, 1), at(0, 2), at(2, 3), at(3, 2), at(5, 3)]).toEqual([
      10, 10, 20, 20, 30, 30, 255, 255,
    ]);
  });

  it("refuses images of another size and an empty grid", () => {
    expect(() => gridImage([[solid(3, 2, 0), solid(2, 2, 0)]])).toThrow(/grid image \[0\]\[1\] is 2×2, the first 3×2/);
    expect(() => gridImage([])).toThrow(/at least one image/);
  });
});

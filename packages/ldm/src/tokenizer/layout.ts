/**
 * The token sequence layout-to-image LDMs condition on (CompVis/latent-diffusion's layout2img-openimages256: a
 * BERTEmbedder without tokenizer, vocab_size 8192, max_seq_len 92), as taming-transformers'
 * ObjectsBoundingBoxConditionalBuilder builds it: per object its class, the token of its top-left corner and the
 * token of its bottom-right corner on a √no_tokens-square grid; objects padded with the "none" token
 * (no_tokens − 1) to the maximum; then, with encode_crop, the crop's two corner tokens (the full image here).
 */

/** One object of a layout: a class (index, or a name of the model's class list) and a box in [0, 1] image units. */
export interface LayoutObject {
  class: number | string;
  /** [x0, y0, x1, y1]: left, top, right, bottom, as fractions of the width and height. */
  box: readonly [number, number, number, number];
}

export interface LayoutBuilderConfig {
  /** The cond stage's vocabulary size (taming's no_tokens); the last token is "none". */
  noTokens: number;
  /** Objects per sequence (no_max_objects). */
  maxObjects: number;
  /** Whether the sequence ends with the crop's two tokens. */
  encodeCrop: boolean;
  /** Class names by index, where the model's data provides them; classes are indices otherwise. */
  classNames?: readonly string[];
}

/** Python's round(): to nearest, ties to even (int(round(x · (sections − 1))) in tokenize_coordinates). */
function roundHalfEven(v: number): number {
  const floor = Math.floor(v);
  const fraction = v - floor;
  if (fraction !== 0.5) return fraction < 0.5 ? floor : floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

export class LayoutBuilder {
  readonly sections: number;

  constructor(readonly cfg: LayoutBuilderConfig) {
    if (!Number.isInteger(cfg.noTokens) || cfg.noTokens < 4) {
      throw new RangeError(`layout: no_tokens ${cfg.noTokens} must be an integer ≥ 4`);
    }
    if (!Number.isInteger(cfg.maxObjects) || cfg.maxObjects < 1) {
      throw new RangeError(`layout: max objects ${cfg.maxObjects} must be a positive integer`);
    }
    this.sections = Math.floor(Math.sqrt(cfg.noTokens));
  }

  /**
   * The builder a BERTEmbedder without tokenizer implies: the sequence is 3 tokens per object, plus 2 for the
   * crop when max_seq_len − 2 (and not max_seq_len) is a multiple of 3 (layout2img: 92 = 30 · 3 + 2).
   */
  static forCondStage(vocabSize: number, maxSeqLen: number, classNames?: readonly string[]): LayoutBuilder {
    const encodeCrop = maxSeqLen % 3 !== 0;
    if (encodeCrop && (maxSeqLen - 2) % 3 !== 0) {
      throw new Error(
        `layout: max_seq_len ${maxSeqLen} is neither 3 · objects nor 3 · objects + 2 (object triples and a crop)`,
      );
    }
    return new LayoutBuilder({
      noTokens: vocabSize,
      maxObjects: (maxSeqLen - (encodeCrop ? 2 : 0)) / 3,
      encodeCrop,
      classNames,
    });
  }

  /** The "none" token that pads missing objects. */
  get none(): number {
    return this.cfg.noTokens - 1;
  }

  get length(): number {
    return this.cfg.maxObjects * 3 + (this.cfg.encodeCrop ? 2 : 0);
  }

  /** tokenize_coordinates: the grid cell of (x, y) in [0, 1]², row-major. */
  coordinateToken(x: number, y: number): number {
    const last = this.sections - 1;
    return roundHalfEven(y * last) * this.sections + roundHalfEven(x * last);
  }

  /** The sequence for a layout, objects in the order given (upstream shuffles them: a training augmentation). */
  build(layout: readonly LayoutObject[]): number[] {
    if (layout.length > this.cfg.maxObjects) {
      throw new Error(`layout has ${layout.length} objects; this model takes at most ${this.cfg.maxObjects}`);
    }
    const tokens: number[] = [];
    layout.forEach((object, i) => {
      const [x0, y0, x1, y1] = object.box;
      // rescale_annotations for the full crop: (x0, y0, w, h) with w, h clamped to the image.
      const w = Math.min(x1 - x0, 1 - x0);
      const h = Math.min(y1 - y0, 1 - y0);
      tokens.push(this.classToken(object.class, i), this.coordinateToken(x0, y0), this.coordinateToken(x0 + w, y0 + h));
    });
    while (tokens.length < this.cfg.maxObjects * 3) tokens.push(this.none);
    if (this.cfg.encodeCrop) tokens.push(this.coordinateToken(0, 0), this.coordinateToken(1, 1));
    return tokens;
  }

  private classToken(value: number | string, index: number): number {
    const names = this.cfg.classNames;
    if (typeof value === "string") {
      const found = names?.indexOf(value) ?? -1;
      if (found < 0) {
        throw new Error(
          names
            ? `layout object ${index}: class "${value}" is not one of the model's ${names.length} class names`
            : `layout object ${index}: class "${value}" is a name, but this model has no class names: give its index`,
        );
      }
      return found;
    }
    const limit = names?.length ?? this.none;
    if (!Number.isInteger(value) || value < 0 || value >= limit) {
      throw new Error(`layout object ${index}: class ${value} must be an integer in [0, ${limit})`);
    }
    return value;
  }
}

/** A layout from JSON text: `[{ "class": 3 | "name", "box": [x0, y0, x1, y1] }, …]`, boxes inside [0, 1]². */
export function parseLayout(text: string, origin = "layout"): LayoutObject[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${origin} is not valid JSON: ${(e as Error).message}`);
  }
  if (!Array.isArray(value)) throw new Error(`${origin} must be a JSON array of {"class", "box"} objects`);
  return value.map((item, i): LayoutObject => {
    const at = `${origin}[${i}]`;
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      throw new Error(`${at} must be an object with "class" and "box"`);
    }
    const { class: cls, box } = item as { class?: unknown; box?: unknown };
    if (typeof cls !== "number" && typeof cls !== "string") {
      throw new Error(`${at}.class must be a class index or name, got ${JSON.stringify(cls)}`);
    }
    if (!Array.isArray(box) || box.length !== 4 || !box.every((v) => typeof v === "number" && Number.isFinite(v))) {
      throw new Error(`${at}.box must be [x0, y0, x1, y1], four numbers, got ${JSON.stringify(box)}`);
    }
    const [x0, y0, x1, y1] = box as number[];
    if (!(x0 >= 0 && y0 >= 0 && x1 <= 1 && y1 <= 1 && x0 < x1 && y0 < y1)) {
      throw new Error(
        `${at}.box [${box.join(", ")}] must satisfy 0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1 (image fractions)`,
      );
    }
    return { class: cls, box: [x0, y0, x1, y1] };
  });
}

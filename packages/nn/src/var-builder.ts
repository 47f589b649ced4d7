import {
  type Device,
  formatShape,
  type ParamDType,
  type Shape,
  shapesEqual,
  Tensor,
  type WeightRequest,
  type WeightSource,
} from "@ldm/tensor";

interface Issue {
  kind: "missing" | "shape";
  key: string;
  expected: Shape;
  stored?: Shape;
}

/** Collects every parameter a model asks for, then validates all of them against the source at once. */
class Registry {
  readonly requests: WeightRequest[] = [];
  readonly issues: Issue[] = [];
  readonly requested = new Set<string>();
  /** Every parameter handed out, so the model's memory can be given back. */
  readonly allocated: Tensor[] = [];
  /** The parameters by key (LoRA merging writes into them). */
  readonly byKey = new Map<string, Tensor>();

  constructor(
    readonly device: Device,
    readonly source: WeightSource,
    readonly dtype: ParamDType,
  ) {}
}

/**
 * Hands out parameters by checkpoint key, candle-style: `new Conv2d(vb.pp("conv_in"), …)` asks for
 * `conv_in.weight` under the current prefix. Tensors are allocated at once and filled later by `load()`,
 * after every key has been checked, so one error can list every missing, unexpected and mis-shaped key.
 */
export class VarBuilder {
  private constructor(
    private readonly registry: Registry,
    readonly prefix: string,
  ) {}

  static from(device: Device, source: WeightSource, dtype: ParamDType = "f32"): VarBuilder {
    return new VarBuilder(new Registry(device, source, dtype), "");
  }

  get device(): Device {
    return this.registry.device;
  }

  get dtype(): ParamDType {
    return this.registry.dtype;
  }

  /** A builder whose keys are prefixed with `name.` (numbers allowed, as in `input_blocks.0`). */
  pp(name: string | number): VarBuilder {
    return new VarBuilder(this.registry, this.key(String(name)));
  }

  private key(name: string): string {
    return this.prefix ? `${this.prefix}.${name}` : name;
  }

  contains(name: string): boolean {
    return this.registry.source.describe(this.key(name)) !== undefined;
  }

  /** The parameter `name` with the given shape, in the builder's dtype (or `dtype`). */
  get(name: string, shape: Shape, dtype: ParamDType = this.registry.dtype): Tensor {
    const r = this.registry;
    const key = this.key(name);
    r.requested.add(key);
    const info = r.source.describe(key);
    if (!info) r.issues.push({ kind: "missing", key, expected: shape });
    else if (!shapesEqual(info.shape, shape))
      r.issues.push({ kind: "shape", key, expected: shape, stored: info.shape });
    const tensor = Tensor.empty(r.device, shape, dtype, { exactSize: true }).keep();
    r.allocated.push(tensor);
    if (!r.byKey.has(key)) r.byKey.set(key, tensor);
    if (info && shapesEqual(info.shape, shape)) r.requests.push({ key, tensor });
    return tensor;
  }

  /**
   * Checks the requested keys against the source and streams the data in. Keys under `prefixes` that the
   * model never asked for are reported as unexpected. Throws one error listing every problem.
   */
  async load(prefixes: readonly string[] = [this.prefix]): Promise<void> {
    const r = this.registry;
    const unexpected = [...r.source.keys()].filter(
      (k) => prefixes.some((p) => p === "" || k.startsWith(`${p}.`)) && !r.requested.has(k),
    );
    if (r.issues.length || unexpected.length) {
      const lines = [
        ...r.issues.map((i) =>
          i.kind === "missing"
            ? `  missing: ${i.key} (expected shape ${formatShape(i.expected)})`
            : `  wrong shape: ${i.key} is ${formatShape(i.stored ?? [])} in the checkpoint, the model needs ${formatShape(i.expected)}`,
        ),
        ...unexpected.map((k) => `  unexpected: ${k}`),
      ];
      const counts = `${r.issues.filter((i) => i.kind === "missing").length} missing, ${unexpected.length} unexpected, ${r.issues.filter((i) => i.kind === "shape").length} mis-shaped`;
      throw new Error(`weights from ${r.source.origin} do not fit the model (${counts}):\n${lines.join("\n")}`);
    }
    await r.source.load(r.requests);
  }

  /** Every parameter handed out (by this builder or any derived from it), by its full key. */
  get parameters(): ReadonlyMap<string, Tensor> {
    return this.registry.byKey;
  }

  /** Frees every parameter this builder (or any builder derived from it by pp) handed out. */
  dispose(): void {
    for (const t of this.registry.allocated.splice(0)) t.dispose();
  }
}

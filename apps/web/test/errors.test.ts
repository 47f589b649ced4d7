import { PipelineOptionError } from "@ldm/ldm";
import { DeviceLimitError, DeviceLostError, GpuOutOfMemoryError } from "@ldm/tensor";
import { describe, expect, it } from "vitest";
import { explain, ModelError, NoAdapterError, NoWebGpuError } from "../src/errors.ts";

describe("explain: what the page says about a failure", () => {
  it.each([
    [new NoWebGpuError("navigator.gpu is undefined"), "no-webgpu", /no WebGPU/],
    [new NoAdapterError("requestAdapter() returned no adapter."), "no-adapter", /no GPU adapter/],
    [new DeviceLimitError("cannot allocate a 2147483648-byte GPU buffer"), "limits", /limits are too small/],
    [new GpuOutOfMemoryError("out of GPU memory allocating 1024 bytes"), "out-of-memory", /Out of GPU memory/],
    [new DeviceLostError("WebGPU device lost (unknown)"), "device-lost", /device was lost/],
    [new PipelineOptionError("width 60 must be a positive multiple of 8"), "settings", /Invalid setting/],
    [new ModelError("model/manifest.json: HTTP 404"), "model", /Cannot load the model/],
    [new Error("something else"), "other", /Generation failed/],
  ])("%s → %s", (error, kind, title) => {
    const explained = explain(error);
    expect(explained.kind).toBe(kind);
    expect(explained.title).toMatch(title);
    // The detail keeps the original message (sizes, keys, URLs) where there is one worth showing.
    if (kind !== "no-webgpu") expect(explained.detail).toContain((error as Error).message);
  });

  it("calls a buffer over maxBufferSize a limit, not a lack of memory (DeviceLimitError is a GpuOutOfMemoryError)", () => {
    const error = new DeviceLimitError("cannot allocate");
    expect(error).toBeInstanceOf(GpuOutOfMemoryError);
    expect(explain(error).kind).toBe("limits");
  });
});

import { describe, expect, it } from "vitest";
import { defaultDtype } from "../src/index.ts";

describe("defaultDtype", () => {
  it("is f16 only on GPU adapters with shader-f16", () => {
    expect(defaultDtype({ isCpu: false, shaderF16: true })).toBe("f16");
    expect(defaultDtype({ isCpu: false, shaderF16: false })).toBe("f32");
    // lavapipe offers shader-f16 but has no half arithmetic: f32 there.
    expect(defaultDtype({ isCpu: true, shaderF16: true })).toBe("f32");
    expect(defaultDtype({ isCpu: true, shaderF16: false })).toBe("f32");
  });
});

import { describe, expect, it } from "vitest";
import { dawnCreateFlags, GPU_FEATURE_TOGGLES } from "../src/index.ts";

describe("dawnCreateFlags", () => {
  it("enables the feature toggles and unquantised timestamps by default", () => {
    expect(dawnCreateFlags([])).toEqual([
      `enable-dawn-features=${GPU_FEATURE_TOGGLES.join(",")}`,
      "disable-dawn-features=timestamp_quantization",
    ]);
  });

  it("merges the caller's toggle lists into one flag per key (Dawn reads one value per key)", () => {
    expect(
      dawnCreateFlags([
        "enable-dawn-features=disable_robustness",
        "disable-dawn-features=lazy_clear_resource_on_first_use",
        "verbose=1",
      ]),
    ).toEqual([
      "verbose=1",
      "enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia,disable_robustness",
      "disable-dawn-features=lazy_clear_resource_on_first_use,timestamp_quantization",
    ]);
  });

  it("lets the caller keep timestamp quantisation or drop a default toggle", () => {
    expect(dawnCreateFlags(["enable-dawn-features=timestamp_quantization"], [])).toEqual([
      "enable-dawn-features=timestamp_quantization",
    ]);
    expect(dawnCreateFlags(["disable-dawn-features=allow_unsafe_apis"])).toEqual([
      "enable-dawn-features=vulkan_enable_f16_on_nvidia",
      "disable-dawn-features=allow_unsafe_apis,timestamp_quantization",
    ]);
  });
});

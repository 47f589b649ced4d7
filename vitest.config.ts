import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: [
      "packages/*/src/**/*.test.ts",
      "packages/*/test/**/*.test.ts",
      "benchmarks/test/**/*.test.ts",
      "release/manifests.test.ts",
    ],
    // lavapipe runs WebGPU on the CPU's 2 cores: GPU test files run one at a time.
    fileParallelism: false,
    // At lavapipe's own 8 lanes, not the 16 a Device takes by default on AVX2 cores (defaultCpuLanes): at 16 every
    // kernel compiles 2–3 times as long, and a fresh machine compiles them all (packages/kernels and nn: 612 s
    // against 258 s with an empty shader cache), which would put the suite past CI's 15 minutes. lanes16.test.ts
    // runs each kernel family at 16 lanes, and cli-cpu-lanes.test.ts the default itself.
    env: { LP_NATIVE_VECTOR_WIDTH: "256" },
    pool: "forks",
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});

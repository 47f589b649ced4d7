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
    pool: "forks",
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});

import { defineConfig } from "vitest/config";

/** `pnpm test:e2e`: the page in headless Chromium against the Node CLI (minutes; not part of `pnpm test`). */
export default defineConfig({
  test: {
    root: import.meta.dirname,
    include: ["test/**/*.test.ts"],
    fileParallelism: false,
    pool: "forks",
    testTimeout: 600_000,
    hookTimeout: 600_000,
  },
});

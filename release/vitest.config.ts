import { defineConfig } from "vitest/config";

/** `pnpm release:check`: build, pack, install the tarballs outside the workspace, use them (about a minute). */
export default defineConfig({
  test: {
    root: import.meta.dirname,
    include: ["pack.test.ts"],
    pool: "forks",
    testTimeout: 300_000,
    hookTimeout: 600_000,
  },
});

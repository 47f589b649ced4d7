/**
 * `pnpm dev:web` serves the page's modules and nothing else of the machine through /@fs/: every module the
 * page imports (followed from /src/main.ts) loads, while the repository's other files and the system's do not.
 */
import { resolve } from "node:path";
import { createServer, type ViteDevServer } from "vite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const repositoryRoot = resolve(import.meta.dirname, "../../..");
let server: ViteDevServer;
let base: string;

beforeAll(async () => {
  server = await createServer({
    configFile: resolve(import.meta.dirname, "../vite.config.ts"),
    logLevel: "error",
    server: { port: 0, host: "127.0.0.1" },
  });
  await server.listen();
  base = (server.resolvedUrls?.local[0] ?? "").replace(/\/$/, "");
});
afterAll(() => server?.close());

const get = (path: string) => fetch(`${base}${path}`);

describe("dev server", () => {
  it("serves every module the page imports", async () => {
    const seen = new Set<string>();
    const queue = ["/src/main.ts"];
    while (queue.length) {
      const path = queue.shift() as string;
      if (seen.has(path)) continue;
      seen.add(path);
      const response = await get(path);
      expect(response.status, path).toBe(200);
      const code = await response.text();
      for (const m of code.matchAll(/(?:import|from)\s*["']([^"']+)["']/g)) {
        if (m[1].startsWith("/")) queue.push(m[1]);
      }
    }
    // The page's own modules and the packages' sources through /@fs/.
    expect([...seen].some((p) => p.startsWith("/@fs/") && p.includes("/packages/ldm/src/"))).toBe(true);
    expect(seen.size).toBeGreaterThan(20);
  });

  it.each([
    `${repositoryRoot}/package.json`,
    `${repositoryRoot}/packages/ldm/models/emoji-ldm/README.md`,
    `${repositoryRoot}/packages/ldm/test/fixtures/dumps/tiny-sd1.yaml`,
    `${repositoryRoot}/packages/ldm/package.json`,
    "/etc/passwd",
  ])("refuses %s", async (file) => {
    expect((await get(`/@fs${file}`)).status).toBe(403);
  });
});

// Each package's prepack. Packs only through pnpm, whose pack and publish apply publishConfig (the dist/ entry
// points, the bin) and turn workspace:* into the version: npm would publish entry points into src/ that the
// tarball does not carry. Then builds (tsc -b: the package and what it imports), so no tarball has a stale dist/.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";

const agent = process.env.npm_config_user_agent ?? "";
if (!agent.startsWith("pnpm/")) {
  const tool = agent.split("/")[0] || "this tool";
  console.error(
    `${process.env.npm_package_name}: pack and publish with pnpm (pnpm pack, pnpm publish), which applies publishConfig; ${tool} would publish the workspace's src/ entry points`,
  );
  process.exit(1);
}
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
execFileSync(process.execPath, [tsc, "-b", "tsconfig.build.json"], { stdio: "inherit" });

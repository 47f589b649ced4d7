// @ts-check
/**
 * Dawn writes its own warnings straight to the process's stderr from native code (on lavapipe, two lines about
 * maxDynamic*BuffersPerPipelineLayout each time an adapter is made), where nothing in JavaScript can catch
 * them; an error would print as three lines. So the CLI runs itself as a child whose stderr passes through
 * here, without Dawn's lines unless --verbose.
 *
 * Plain JavaScript that imports only Node: the repository's bin/ldm.mjs runs it before it registers tsx, so the
 * launching process, which only relays the child's stderr, loads neither tsx nor the CLI.
 */
import { spawn } from "node:child_process";

/** How Dawn's logging writes a warning line (dawn::LogMessage); ours all begin with "ldm:" or are progress. */
const DAWN_LINE = /^Warning: /;
const CHILD_ENV = "LDM_STDERR_FILTERED";
/** The commands that start WebGPU; the others run in one process (a relaunch costs a Node start). */
const GPU_COMMANDS = new Set(["generate", "validate", "loss", "bench", "device", "serve"]);

/**
 * In the launching process (not --verbose): runs the CLI again as a child with Dawn's lines dropped from its
 * stderr and resolves to its exit code. In the child, or with --verbose: undefined, and the caller runs main.
 *
 * @param {readonly string[]} argv
 * @returns {Promise<number | undefined>}
 */
export async function runWithoutDawnWarnings(argv) {
  if (process.env[CHILD_ENV] === "1") {
    // The terminal the parent writes to is the child's terminal: let progress bars draw as on a TTY.
    if (process.env.LDM_STDERR_TTY === "1") {
      Object.assign(process.stderr, { isTTY: true, columns: Number(process.env.LDM_STDERR_COLUMNS) || 80 });
    }
    return undefined;
  }
  const command = argv.slice(2).find((a) => !a.startsWith("-"));
  if (argv.includes("--verbose") || argv.includes("--help") || !GPU_COMMANDS.has(command ?? "")) return undefined;
  const child = spawn(process.execPath, [...process.execArgv, ...argv.slice(1)], {
    stdio: ["inherit", "inherit", "pipe"],
    env: {
      ...process.env,
      [CHILD_ENV]: "1",
      ...(process.stderr.isTTY ? { LDM_STDERR_TTY: "1", LDM_STDERR_COLUMNS: String(process.stderr.columns) } : {}),
    },
  });
  // Ctrl-C reaches the child from the terminal; the child decides how to stop, the parent waits for it.
  const ignore = () => {};
  process.on("SIGINT", ignore);
  const forward = () => child.kill("SIGTERM");
  process.on("SIGTERM", forward);
  const filter = new DawnLineFilter((text) => process.stderr.write(text));
  child.stderr?.setEncoding("utf8").on("data", (/** @type {string} */ chunk) => filter.push(chunk));
  /** @type {number} */
  const code = await new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (exitCode, signal) => resolve(exitCode ?? (signal ? 128 + signalNumber(signal) : 1)));
  });
  filter.end();
  process.off("SIGINT", ignore);
  process.off("SIGTERM", forward);
  return code;
}

/**
 * Drops whole lines that Dawn wrote and passes everything else on at once (a progress bar redraws its line
 * without a newline): only a partial line that may still become a Dawn line is held back.
 */
export class DawnLineFilter {
  /** @param {(text: string) => unknown} write */
  constructor(write) {
    /** @private @readonly */
    this.write = write;
    /** @private */
    this.held = "";
  }

  /** @param {string} chunk */
  push(chunk) {
    const text = this.held + chunk;
    const lines = text.split("\n");
    const partial = lines.pop() ?? "";
    const kept = lines.filter((line) => !DAWN_LINE.test(line));
    let out = kept.length ? `${kept.join("\n")}\n` : "";
    const mayBeDawn = DAWN_LINE.test(partial) || "Warning: ".startsWith(partial);
    this.held = mayBeDawn ? partial : "";
    if (!mayBeDawn) out += partial;
    if (out) this.write(out);
  }

  end() {
    if (this.held && !DAWN_LINE.test(this.held)) this.write(this.held);
    this.held = "";
  }
}

/** @param {NodeJS.Signals} signal */
function signalNumber(signal) {
  /** @type {Record<string, number>} */
  const numbers = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15, SIGSEGV: 11, SIGABRT: 6 };
  return numbers[signal] ?? 1;
}

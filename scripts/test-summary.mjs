// Prints vitest's JSON report as one plain closing line ("N passed, N failed, N skipped") for CI logs.
import { readFileSync } from "node:fs";

const report = JSON.parse(readFileSync(process.argv[2], "utf8"));
const skipped = report.numPendingTests + (report.numTodoTests ?? 0);
// A file whose setup (beforeAll) throws fails with its tests counted as skipped: say so.
const failedFiles = report.testResults.filter((file) => file.status === "failed").length;
const files = failedFiles ? `; ${failedFiles} file(s) failed` : "";
console.log(`tests: ${report.numPassedTests} passed, ${report.numFailedTests} failed, ${skipped} skipped${files}`);

// The TypeScript tokenizer against the Python one on the built-in model's vocabulary.
// Input: the cases file that `bpe.py check --ts-fixture` writes (texts and their 77 end-padded ids
// from the Python tokenizer, itself checked against openai/CLIP's simple_tokenizer).
// Usage (repo root): npx tsx reference/default_model/check_tokenizer.ts reference/out/default_model/tokenizer-cases.json
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ClipTokenizer } from "../../packages/ldm/src/tokenizer/clip-tokenizer.ts";
import { gunzipText } from "../../packages/ldm/src/tokenizer/vocab-bytes.ts";
import { loadClipTokenizer } from "../../packages/ldm/src/tokenizer/vocab-files.ts";

interface Cases {
  tokenizer: string;
  cases: { text: string; ids: number[] }[];
}

const casesPath = process.argv[2];
if (!casesPath) throw new Error("usage: check_tokenizer.ts <tokenizer-cases.json from bpe.py check --ts-fixture>");
const { tokenizer: folder, cases } = JSON.parse(readFileSync(casesPath, "utf8")) as Cases;

function mismatches(tokenizer: ClipTokenizer): string[] {
  return cases
    .filter(({ text, ids }) => tokenizer.tokenize(text).padded.join(",") !== ids.join(","))
    .map(({ text }) => text);
}

let failed = false;
const fromFolder = loadClipTokenizer({ vocab: folder });
const folderMismatches = mismatches(fromFolder.tokenizer);
failed ||= folderMismatches.length > 0;
console.log(
  `HF folder (vocab.json + merges.txt): start ${fromFolder.tokenizer.startId}, end ${fromFolder.tokenizer.endId}, ` +
    `padding ${fromFolder.padWith}; ${cases.length - folderMismatches.length}/${cases.length} texts equal; ` +
    `first mismatches: ${JSON.stringify(folderMismatches.slice(0, 3))}`,
);

const gzipped = new Uint8Array(readFileSync(join(folder, "bpe_emoji.txt.gz")));
try {
  const fromMerges = ClipTokenizer.fromBpeMerges(await gunzipText(gzipped));
  const mergesMismatches = mismatches(fromMerges);
  failed ||= mergesMismatches.length > 0;
  console.log(`CLIP-format merges file: ${cases.length - mergesMismatches.length}/${cases.length} texts equal`);
} catch (e) {
  console.log(`CLIP-format merges file: ClipTokenizer.fromBpeMerges refuses it: ${(e as Error).message}`);
}
process.exit(failed ? 1 : 0);

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { END_OF_TEXT, START_OF_TEXT } from "../../src/tokenizer/index.ts";
import { loadClipTokenizer } from "../../src/tokenizer/vocab-files.ts";

/** CLIP's BPE vocabulary, shipped with @ldm/ldm: see vocab/clip/README.md. */
export const CLIP_VOCAB = new URL("../../vocab/clip/bpe_simple_vocab_16e6.txt.gz", import.meta.url).pathname;

/**
 * A Hugging Face tokenizer folder for the tiny reference models (reference/make_dumps.py), whose text encoders
 * have `vocabSize` tokens with start = vocabSize − 2 and end = vocabSize − 1: CLIP's vocabulary cut to its 512
 * byte tokens and first vocabSize − 514 merges (ids below vocabSize − 2 are unchanged), then the two specials.
 */
export function writeTinyVocab(folder: string, vocabSize: number): string {
  const { vocabJson, mergesText } = loadClipTokenizer({ vocab: CLIP_VOCAB }).tokenizer.toVocabAndMerges();
  const kept = vocabSize - 2;
  const vocab = Object.fromEntries(
    Object.entries(JSON.parse(vocabJson) as Record<string, number>).filter(([, id]) => id < kept),
  );
  vocab[START_OF_TEXT] = kept;
  vocab[END_OF_TEXT] = kept + 1;
  const [header, ...merges] = mergesText.split("\n");
  mkdirSync(folder, { recursive: true });
  writeFileSync(join(folder, "vocab.json"), JSON.stringify(vocab));
  writeFileSync(join(folder, "merges.txt"), `${[header, ...merges.slice(0, kept - 512)].join("\n")}\n`);
  return folder;
}

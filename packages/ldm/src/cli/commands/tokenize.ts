import type { Command } from "commander";
import { embeddingFilesIn, readEmbeddingFile } from "../../pipeline/embedding-files.ts";
import { embeddingTriggers, type TextualInversion } from "../../pipeline/embeddings.ts";
import type { ClipTokenizer, PadWith } from "../../tokenizer/clip-tokenizer.ts";
import { chunkPrompt, parsePromptAttention, TriggerTable } from "../../tokenizer/prompt-attention.ts";
import { loadBertTokenizer, loadClipTokenizer } from "../../tokenizer/vocab-files.ts";
import { UserError } from "../errors.ts";
import { addEmbeddingOptions, type EmbeddingFlags } from "./pipeline-flags.ts";

interface TokenizeFlags extends EmbeddingFlags {
  vocab?: string;
  model?: string;
  padWith?: string;
  tokenizer?: string;
  weights?: boolean;
}

const TOKENIZERS = ["clip", "bert"];

/** BERT's ids ([CLS] … [SEP], truncated to 77, [PAD] 0): the paper's txt2img/text2img models' BERTEmbedder. */
function tokenizeBert(prompt: string, flags: TokenizeFlags): void {
  if (flags.padWith !== undefined) throw new UserError("--pad-with is for CLIP; BERT always pads with [PAD] (0)");
  if (flags.weights) throw new UserError("--weights is for CLIP: the BERT models take no emphasis");
  if (flags.model !== undefined) throw new UserError("--model is for CLIP's tokenizer/ folder; give BERT --vocab");
  if (flags.embedding || flags.embeddingsDir !== undefined) {
    throw new UserError("embeddings are for CLIP: the BERT models take none");
  }
  let loaded: ReturnType<typeof loadBertTokenizer>;
  try {
    loaded = loadBertTokenizer(flags.vocab);
  } catch (e) {
    throw new UserError((e as Error).message);
  }
  const { ids, padded, truncated } = loaded.tokenizer.tokenize(prompt);
  console.log(JSON.stringify({ ids, padded, truncated }));
}

/**
 * The triggers of --embedding and --embeddings-dir, their vectors numbered from the vocabulary's end as generate
 * numbers them (without a model, embeddings of any width are taken).
 */
async function embeddingTriggerTable(tokenizer: ClipTokenizer, flags: EmbeddingFlags) {
  const embeddings: TextualInversion[] = [];
  try {
    const folder = flags.embeddingsDir === undefined ? [] : await embeddingFilesIn(flags.embeddingsDir);
    for (const path of [...folder, ...(flags.embedding ?? [])]) embeddings.push(await readEmbeddingFile(path));
  } catch (e) {
    throw new UserError((e as Error).message);
  }
  const byName = [...new Map(embeddings.map((e) => [e.name, e])).values()];
  const triggers = embeddingTriggers(tokenizer, byName, tokenizer.vocabularySize);
  return { table: new TriggerTable(triggers), triggers };
}

export function registerTokenize(program: Command): void {
  const command = program
    .command("tokenize")
    .description(
      "print a prompt's token ids as JSON: ids (start … end, truncated to 77), padded (77) and truncated (tokens dropped)",
    )
    .argument("<prompt>", "the prompt text")
    .option(
      "--tokenizer <clip|bert>",
      "clip (Stable Diffusion) or bert (the paper's txt2img models: bert-base-uncased WordPiece)",
      "clip",
    )
    .option(
      "--vocab <path>",
      "CLIP: bpe_simple_vocab_16e6.txt.gz or a folder with vocab.json and merges.txt; BERT: vocab.txt (default: the shipped one)",
    )
    .option("--model <folder>", "model folder whose tokenizer/ to use when --vocab is not given")
    .option(
      "--pad-with <end|zero>",
      "pad with the end token (SD1) or 0 (SD2/OpenCLIP); default: the folder's pad_token, else end",
    )
    .option(
      "--weights",
      "CLIP: the prompt as generate reads it (A1111 syntax): parsed text runs with their emphasis weights, then chunks of 77 ids with a weight each (printed with --embedding too: a trigger becomes its vectors' ids, numbered after the vocabulary)",
    );
  addEmbeddingOptions(command).action(async (prompt: string, flags: TokenizeFlags) => {
    if (!TOKENIZERS.includes(flags.tokenizer ?? "clip")) {
      throw new UserError(`--tokenizer must be one of ${TOKENIZERS.join(", ")}, got "${flags.tokenizer}"`);
    }
    if (flags.tokenizer === "bert") return tokenizeBert(prompt, flags);
    if (flags.padWith !== undefined && flags.padWith !== "end" && flags.padWith !== "zero") {
      throw new UserError(`--pad-with must be "end" or "zero", got "${flags.padWith}"`);
    }
    let loaded: ReturnType<typeof loadClipTokenizer>;
    try {
      loaded = loadClipTokenizer({ vocab: flags.vocab, model: flags.model });
    } catch (e) {
      throw new UserError((e as Error).message);
    }
    const padWith = (flags.padWith as PadWith | undefined) ?? loaded.padWith ?? "end";
    const embeddings =
      flags.embedding?.length || flags.embeddingsDir !== undefined
        ? await embeddingTriggerTable(loaded.tokenizer, flags)
        : undefined;
    if (flags.weights || embeddings) {
      let parsed: ReturnType<typeof parsePromptAttention>;
      try {
        parsed = parsePromptAttention(prompt);
      } catch (e) {
        throw new UserError((e as Error).message);
      }
      let chunked: ReturnType<typeof chunkPrompt>;
      try {
        chunked = chunkPrompt(loaded.tokenizer, prompt, { length: 77, padWith, triggers: embeddings?.table });
      } catch (e) {
        throw new UserError((e as Error).message);
      }
      const { chunks, tokenCount } = chunked;
      const used = embeddings?.triggers
        .filter((t) => chunked.triggers.includes(t.name))
        .map(({ name, ids }) => ({ name, vectors: ids.length, ids }));
      console.log(JSON.stringify({ parsed, tokenCount, chunks, ...(used ? { embeddings: used } : {}) }));
      return;
    }
    const { ids, padded, truncated } = loaded.tokenizer.tokenize(prompt, { padWith });
    console.log(JSON.stringify({ ids, padded, truncated }));
  });
}

import type { Command } from "commander";
import type { PadWith } from "../../tokenizer/clip-tokenizer.ts";
import { loadClipTokenizer } from "../../tokenizer/vocab-files.ts";
import { UserError } from "../errors.ts";

interface TokenizeFlags {
  vocab?: string;
  model?: string;
  padWith?: string;
}

export function registerTokenize(program: Command): void {
  program
    .command("tokenize")
    .description("print a prompt's CLIP token ids as JSON: ids (start … end, truncated to 77) and padded (77)")
    .argument("<prompt>", "the prompt text")
    .option(
      "--vocab <path>",
      "bpe_simple_vocab_16e6.txt.gz, or a tokenizer folder with vocab.json and merges.txt (default: the shipped CLIP vocabulary)",
    )
    .option("--model <folder>", "model folder whose tokenizer/ to use when --vocab is not given")
    .option(
      "--pad-with <end|zero>",
      "pad with the end token (SD1) or 0 (SD2/OpenCLIP); default: the folder's pad_token, else end",
    )
    .action((prompt: string, flags: TokenizeFlags) => {
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
      const { ids, padded, truncated } = loaded.tokenizer.tokenize(prompt, { padWith });
      console.log(JSON.stringify({ ids, padded, truncated }));
    });
}

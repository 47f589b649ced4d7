"""Byte-level BPE for the built-in model, in CLIP's algorithm and file format.

Encoding is openai/CLIP's `simple_tokenizer` algorithm (our own code, checked against the
original by `check` below): text cleaned (HTML entities unescaped twice, whitespace collapsed,
stripped, lowercased; ftfy.fix_text is left out, as in the TypeScript tokenizer: the captions
are plain NFC text with straight quotes, which ftfy leaves unchanged), split by CLIP's regex,
UTF-8 bytes mapped to GPT-2's printable byte characters, the last character of a word marked
with `</w>`, then merges applied lowest rank first.

The vocabulary follows from the merges file exactly as CLIP builds it: 256 byte characters,
the same with `</w>`, one token per merge in file order, `<|startoftext|>`, `<|endoftext|>`;
so with M merges the start id is 512 + M and the end id 513 + M.

Learning (`learn_merges`) is Sennrich et al.'s BPE on the same pre-tokenised words: count the
adjacent symbol pairs over all words (weighted by word frequency), merge the most frequent pair
(ties: the smallest pair in code point order), repeat. The file is CLIP's format: gzip of one
header line, then one "a b" merge per line, with NO trailing newline: simple_tokenizer reads
`split('\\n')[1:48895]`, so on a file with fewer merges than CLIP's a final newline would become
an empty merge and shift both special ids by one.

Usage:
  /usr/bin/python3 reference/default_model/bpe.py train --captions reference/out/emoji/emoji-64.json \\
      --vocab-size 4096 --out reference/out/default_model/tokenizer
  /usr/bin/python3 reference/default_model/bpe.py check --clip-repo /tmp/clip-ref \\
      --bpe reference/out/default_model/tokenizer/bpe_emoji.txt.gz --captions reference/out/emoji/emoji-64.json
"""

import argparse
import collections
import gzip
import html
import json
import os
import sys

import regex

START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
CONTEXT_LENGTH = 77
HEADER = "#version: 0.2"
BPE_FILE = "bpe_emoji.txt.gz"
# CLIP's pre-tokeniser; the IGNORECASE is upstream's (the text is already lowercased).
WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
WHITESPACE = regex.compile(r"\s+")


def byte_characters():
    """GPT-2's reversible byte -> printable character table, in vocabulary order (printable
    Latin-1 bytes as themselves first, then the others as U+0100 onwards)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


BYTE_CHARS = byte_characters()


def clean(text):
    text = html.unescape(html.unescape(text)).strip()
    return WHITESPACE.sub(" ", text).strip().lower()


def words_of(text):
    """The pre-tokenised words of a text, as byte-character strings."""
    return ["".join(BYTE_CHARS[b] for b in word.encode("utf-8")) for word in WORD_PATTERN.findall(clean(text))]


def initial_symbols(word):
    return (*word[:-1], word[-1] + END_OF_WORD)


def merge_pair(symbols, first, second):
    """Every non-overlapping occurrence of (first, second), left to right, as one symbol."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def learn_merges(texts, max_merges, min_count=2):
    """Up to `max_merges` merges, stopping early when no pair occurs `min_count` times."""
    word_counts = collections.Counter(word for text in texts for word in words_of(text))
    words = [list(initial_symbols(w)) for w in word_counts]
    counts = list(word_counts.values())
    pair_counts = collections.Counter()
    words_with_pair = collections.defaultdict(set)
    for index, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += counts[index]
            words_with_pair[pair].add(index)

    merges = []
    while len(merges) < max_merges and pair_counts:
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        if pair_counts[best] < min_count:
            break
        merges.append(best)
        first, second = best
        for index in words_with_pair.pop(best):
            symbols = words[index]
            for pair in zip(symbols, symbols[1:]):
                pair_counts[pair] -= counts[index]
                if pair_counts[pair] == 0:
                    del pair_counts[pair]
            merged = merge_pair(symbols, first, second)
            words[index] = merged
            for pair in zip(merged, merged[1:]):
                pair_counts[pair] += counts[index]
                words_with_pair[pair].add(index)
    return merges


def write_merges(path, merges):
    text = "\n".join([HEADER, *(f"{a} {b}" for a, b in merges)])  # no trailing newline: see the module doc
    with open(path, "wb") as file, gzip.GzipFile(fileobj=file, mode="wb", mtime=0, filename="") as gz:
        gz.write(text.encode("utf-8"))


def read_merges(path):
    """simple_tokenizer's reading: lines 1..48894 after the header, each split on whitespace."""
    with gzip.open(path) as file:
        lines = file.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    for number, merge in enumerate(merges, start=2):
        if len(merge) != 2:
            raise ValueError(f"{path}: line {number} is {' '.join(merge)!r}, not two symbols (a trailing newline?)")
    return merges


class Tokenizer:
    def __init__(self, merges):
        self.merges = list(merges)
        chars = list(BYTE_CHARS.values())
        self.vocab = chars + [c + END_OF_WORD for c in chars] + ["".join(m) for m in self.merges]
        self.vocab += [START_OF_TEXT, END_OF_TEXT]
        self.encoder = {token: i for i, token in enumerate(self.vocab)}
        if len(self.encoder) != len(self.vocab):
            raise ValueError("the merges produce a token twice; not a BPE merges list")
        self.ranks = {merge: rank for rank, merge in enumerate(self.merges)}
        self.start_id = self.encoder[START_OF_TEXT]
        self.end_id = self.encoder[END_OF_TEXT]
        self.cache = {START_OF_TEXT: [START_OF_TEXT], END_OF_TEXT: [END_OF_TEXT]}

    @classmethod
    def from_file(cls, path):
        return cls(read_merges(path))

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        symbols = list(initial_symbols(word))
        while len(symbols) > 1:
            pairs = [p for p in zip(symbols, symbols[1:]) if p in self.ranks]
            if not pairs:
                break
            symbols = merge_pair(symbols, *min(pairs, key=self.ranks.__getitem__))
        self.cache[word] = symbols
        return symbols

    def encode(self, text):
        return [self.encoder[token] for word in words_of(text) for token in self.bpe(word)]

    def tokenize(self, text, length=CONTEXT_LENGTH):
        """Start, BPE ids truncated to length - 2, end, padded with the end token (SD1 / HF CLIPTokenizer)."""
        ids = [self.start_id, *self.encode(text)[: length - 2], self.end_id]
        return ids + [self.end_id] * (length - len(ids))


def write_tokenizer_folder(folder, merges):
    """CLIP's merges file plus the same vocabulary as a Hugging Face CLIPTokenizer folder
    (vocab.json, merges.txt, special_tokens_map.json), which the TypeScript loader reads."""
    os.makedirs(folder, exist_ok=True)
    write_merges(os.path.join(folder, BPE_FILE), merges)
    tokenizer = Tokenizer(merges)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as file:
        json.dump(tokenizer.encoder, file, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as file:
        file.write("\n".join([HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n")
    special = {"bos_token": START_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT, "pad_token": END_OF_TEXT}
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as file:
        json.dump(special, file, indent=2)
        file.write("\n")
    return tokenizer


def all_captions(dataset_json):
    with open(dataset_json, encoding="utf-8") as file:
        items = json.load(file)["items"]
    return [caption for item in items for caption in item["captions"]]


def train(args):
    captions = all_captions(args.captions)
    merges = learn_merges(captions, args.vocab_size - 514)
    tokenizer = write_tokenizer_folder(args.out, merges)
    lengths = [len(tokenizer.encode(c)) for c in captions]
    words = {w for c in captions for w in words_of(c)}
    whole = sum(len(tokenizer.bpe(w)) == 1 for w in words)
    print(f"{len(merges)} merges, vocab {len(tokenizer.vocab)} (start {tokenizer.start_id}, end {tokenizer.end_id}); "
          f"{len(captions)} captions, {len(words)} distinct words, {whole} of them one token; "
          f"tokens per caption: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}")
    print(f"wrote {args.out}/{{{BPE_FILE}, vocab.json, merges.txt, special_tokens_map.json}}")


# Prompts beyond the captions: unseen words (fall back to smaller pieces), punctuation, numbers, entities.
EXTRA_PROMPTS = [
    "red apple",
    "a photograph of an astronaut riding a horse",
    "Flag: Côte d'Ivoire &amp; 1234 !!",
    "zebra-like   UNSEEN\twords, e.g. quokka's",
]


def check(args):
    """Our Tokenizer against openai/CLIP's SimpleTokenizer run from a checkout: with our merges
    file on every caption, and with CLIP's own file on the same texts."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tokenizer"))
    from clip_tokenizer_fixtures import install_stand_ins

    install_stand_ins()
    sys.path.insert(0, args.clip_repo)
    from clip.simple_tokenizer import SimpleTokenizer

    texts = sorted(set(all_captions(args.captions))) + EXTRA_PROMPTS
    failures = 0
    for name, path in [("ours", args.bpe), ("CLIP's", args.clip_bpe)]:
        upstream = SimpleTokenizer(bpe_path=path)
        mine = Tokenizer.from_file(path)
        if upstream.encoder != mine.encoder:
            print(f"{name} vocabulary differs from simple_tokenizer's")
            failures += 1
        mismatched = [t for t in texts if upstream.encode(t) != mine.encode(t)]
        failures += len(mismatched)
        print(f"{name} merges ({path}): vocab {len(mine.vocab)}, start {mine.start_id}, end {mine.end_id}; "
              f"{len(texts) - len(mismatched)}/{len(texts)} texts tokenize as simple_tokenizer; "
              f"first mismatches: {mismatched[:3]}")
    if args.ts_fixture:
        mine = Tokenizer.from_file(args.bpe)
        cases = [{"text": t, "ids": mine.tokenize(t)} for t in texts]
        os.makedirs(os.path.dirname(os.path.abspath(args.ts_fixture)), exist_ok=True)
        with open(args.ts_fixture, "w", encoding="utf-8") as file:
            json.dump({"tokenizer": os.path.dirname(os.path.abspath(args.bpe)), "cases": cases}, file, ensure_ascii=False)
        print(f"wrote {len(cases)} tokenized texts (77 ids, end-padded) to {args.ts_fixture}")
    sys.exit(1 if failures else 0)


def main():
    parser = argparse.ArgumentParser(description="CLIP-format byte-level BPE for the built-in model")
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="learn merges from the dataset captions")
    train_parser.add_argument("--captions", required=True, help="dataset JSON from reference/data/make_emoji_dataset.py")
    train_parser.add_argument("--vocab-size", type=int, default=4096, help="at most this many tokens (514 + merges)")
    train_parser.add_argument("--out", required=True, help="tokenizer folder to write")
    check_parser = commands.add_parser("check", help="compare with openai/CLIP's simple_tokenizer")
    check_parser.add_argument("--clip-repo", required=True, help="checkout of github.com/openai/CLIP")
    check_parser.add_argument("--bpe", required=True, help="our merges file (bpe_emoji.txt.gz)")
    check_parser.add_argument(
        "--clip-bpe",
        default=os.path.join(os.path.dirname(__file__), "../../packages/ldm/vocab/clip/bpe_simple_vocab_16e6.txt.gz"),
    )
    check_parser.add_argument("--captions", required=True)
    check_parser.add_argument("--ts-fixture", help="also write the texts and their ids here, for the TypeScript check")
    args = parser.parse_args()
    if args.command == "train":
        if args.vocab_size <= 514:
            parser.error(f"--vocab-size {args.vocab_size}: must exceed 514 (bytes, bytes + </w>, 2 specials)")
        train(args)
    else:
        check(args)


if __name__ == "__main__":
    main()

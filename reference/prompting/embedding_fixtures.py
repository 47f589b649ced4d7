"""Textual-inversion fixtures: packages/ldm/test/fixtures/prompts/embeddings/ and embedding-conditioning.safetensors.

    /usr/bin/python3 reference/prompting/embedding_fixtures.py --upstream /tmp/embed-up --clip-repo /tmp/embed-clip-ref

--upstream holds the ORIGINAL text encoders, as crosscheck_upstream.py takes them: open_clip/ (mlfoundations/open_clip
v2.0.2), transformers/ (transformers 4.27.1's modeling_clip.py and activations.py), stablediffusion/
(Stability-AI/stablediffusion's ldm/, for FrozenOpenCLIPEmbedder.encode_with_transformer). --clip-repo holds
openai/CLIP's clip/ (SimpleTokenizer). Never committed.

Writes embedding files as the tools that make them save them: A1111's .pt (torch.save of {"string_to_token",
"string_to_param": {"*": tensor}, "name", "step", …}, the tensor requiring grad as after training), a safetensors
with `emb_params` (float32, [2, 32]), one with A1111's flattened `string_to_param.*` (float16, one [32] vector), and
one of another width (48) that a tiny model must refuse.

Then, for a corpus of prompts with their trigger words, the conditioning of tiny-sd1 (CLIP skip 1 and 2) and
tiny-sd2 with the vectors in place, computed by this file's own implementation of A1111's textual-inversion
semantics (modules/sd_hijack_clip.py tokenize_line, modules/sd_hijack.py EmbeddingsWithFixes):
- the prompt parsed for emphasis (the syntax the corpus uses: `(text)`, `[text]`, `(text:w)`, BREAK);
- each text run tokenized alone; at each position the longest trigger whose tokens follow (the trigger's tokens
  are its file name tokenized) becomes the embedding's n vectors, weighted as the run, counting as n tokens;
- chunks of 75 as A1111 makes them (a trigger's vectors that do not fit start the next chunk; a full chunk moves
  what follows its last comma, within 20 tokens, to the next). Where the moved tokens hold vectors, the vectors
  move with them: A1111 moves only the placeholder ids and writes the vectors at the old offsets, past the end of
  the shortened chunk, which ldm.ts does not copy (its README says so);
- each chunk encoded by the ORIGINAL module with its token embedding wrapped as EmbeddingsWithFixes wraps it:
  the token embeddings of the ids (placeholder 0 where vectors go), then the vectors written over the rows at
  their positions, before the position embedding is added; then A1111's "Original" emphasis per chunk.
The tokenizer is CLIP's cut to the tiny models' vocabulary of 1000 (its first 486 merges; start 998, end 999),
the vocabulary the TypeScript test writes (test/helpers/tiny-vocab.ts), so both tokenize the prompts alike.
"""

import argparse
import gzip
import json
import os
import re
import sys
import tempfile
import types
from functools import partial

import torch
import yaml

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from crosscheck_upstream import install_shims, load_hf_clip, package_without_init, prefixed  # noqa: E402
from ldm_ref.safetensors_io import load_file, save_file  # noqa: E402

FIXTURES = os.path.join(HERE, "../../packages/ldm/test/fixtures")
OUT = os.path.join(FIXTURES, "prompts")
VOCAB = 1000
CHUNK = 75
BACKTRACK = 20

PROMPTS = [
    "a photo of lumen",
    "(lumen:1.3) and [ink], a zorblax-style painting",
    "lumens are not lumen",
    "x " * 73 + "lumen after 73 tokens",
    "ink BREAK lumen, ((zorblax-style))",
    "word " * 34 + ", lumen " + "more " * 10,
]


def write_embeddings(folder):
    """The embedding files (random vectors of the tiny models' token embeddings' scale)."""
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(2323)
    lumen = (torch.randn(3, 32, generator=g) * 0.05).requires_grad_(True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": lumen}, "name": "lumen", "step": 500,
                "sd_checkpoint": "0123456789", "sd_checkpoint_name": "tiny-sd1"}, os.path.join(folder, "lumen.pt"))
    save_file({"emb_params": torch.randn(2, 32, generator=g) * 0.05}, os.path.join(folder, "zorblax-style.safetensors"))
    save_file({"string_to_param.*": (torch.randn(32, generator=g) * 0.05).half()}, os.path.join(folder, "ink.safetensors"))
    save_file({"emb_params": torch.randn(2, 48, generator=g) * 0.05}, os.path.join(folder, "wide.safetensors"))


def read_embedding(path):
    """[n, width] float32 of a file written above (read back, as a loader would)."""
    if path.endswith(".pt"):
        return next(iter(torch.load(path)["string_to_param"].values())).detach().float().reshape(-1, 32)
    tensors, _ = load_file(path)
    (tensor,) = tensors.values()
    return tensor.float().reshape(1, -1) if tensor.ndim == 1 else tensor.float()


def parse_emphasis(prompt):
    """(text, weight) runs: `(x)` ×1.1, `[x]` ÷1.1, `(x:w)` ×w, nested by multiplying; BREAK as ("BREAK", -1)."""
    runs, stack = [], []
    for match in re.finditer(r":([+-]?[\d.]+)\)|[()\[\]]|[^()\[\]:]+|:", prompt):
        token = match.group(0)
        if token in "([":
            stack.append((token, len(runs)))
        elif token in ")]" or match.group(1):
            _, start = stack.pop()
            factor = float(match.group(1)) if match.group(1) else (1.1 if token == ")" else 1 / 1.1)
            runs[start:] = [(text, weight * factor) for text, weight in runs[start:]]
        else:
            for i, part in enumerate(re.split(r"\s*\bBREAK\b\s*", token)):
                if i:
                    runs.append(("BREAK", -1))
                runs.append((part, 1.0))
    merged = []
    for text, weight in runs:
        if merged and merged[-1][1] == weight and weight != -1 and text != "BREAK":
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged


def chunk_prompt(prompt, tokenizer, triggers, comma):
    """Chunks of 77 entries (ids, or ("vec", name, i) where vectors go), their weights, and the token count."""
    chunks, count = [], 0
    entries, weights, last_comma = [], [], -1

    def close(last=False):
        nonlocal entries, weights, last_comma, count
        count += len(entries) if last else CHUNK
        fill = CHUNK - len(entries)
        chunks.append(([START] + entries + [END] * fill + [END], [1.0] + weights + [1.0] * fill + [1.0]))
        entries, weights, last_comma = [], [], -1

    for text, weight in parse_emphasis(prompt):
        if weight == -1:
            close()
            continue
        tokens = tokenizer.encode(text)
        at = 0
        while at < len(tokens):
            if tokens[at] == comma:
                last_comma = len(entries)
            elif len(entries) == CHUNK and last_comma != -1 and len(entries) - last_comma <= BACKTRACK:
                moved = (entries[last_comma + 1:], weights[last_comma + 1:])
                entries, weights = entries[:last_comma + 1], weights[:last_comma + 1]
                close()
                entries, weights = list(moved[0]), list(moved[1])
            if len(entries) == CHUNK:
                close()
            found = next(((name, ids) for name, ids in triggers if tokens[at:at + len(ids)] == ids), None)
            if found is None:
                entries.append(tokens[at])
                weights.append(weight)
                at += 1
                continue
            name, ids = found
            n = VECTORS[name].shape[0]
            if len(entries) + n > CHUNK:
                close()
            entries += [("vec", name, i) for i in range(n)]
            weights += [weight] * n
            at += len(ids)
    if entries or not chunks:
        close(last=True)
    return chunks, count


class EmbeddingsWithFixes(torch.nn.Module):
    """A token embedding whose rows at given positions are replaced by embedding vectors (set before each call)."""

    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped
        self.fixes = []

    def forward(self, input_ids):
        out = self.wrapped(input_ids)
        rows = []
        for row, fixes in zip(out, self.fixes):
            for position, vector in fixes:
                row = torch.cat([row[:position], vector[None].to(row.dtype), row[position + 1:]])
            rows.append(row)
        return torch.stack(rows)


def encode_chunks(chunks, encode, wrapper, openclip):
    """A1111's forward over the chunks: per chunk, ids with placeholders, the vectors fixed in, "Original" emphasis."""
    zs = []
    for entries, weights in chunks:
        ids = [0 if isinstance(e, tuple) else e for e in entries]
        if openclip:
            first_end = ids.index(END)
            ids[first_end + 1:] = [0] * (len(ids) - first_end - 1)
        wrapper.fixes = [[(p, VECTORS[e[1]][e[2]]) for p, e in enumerate(entries) if isinstance(e, tuple)]]
        with torch.no_grad():
            z = encode(torch.tensor([ids]))
            mean = z.mean()
            z = z * torch.tensor(weights).reshape(1, -1, 1)
            z = z * (mean / z.mean())
        zs.append(z)
    return torch.hstack(zs)


def main():
    global START, END, VECTORS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--clip-repo", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    install_shims()
    sys.modules["ftfy"] = types.SimpleNamespace(fix_text=lambda text: text)
    sys.path.insert(0, os.path.join(args.upstream, "stablediffusion"))
    package_without_init("open_clip", os.path.join(args.upstream, "open_clip", "src", "open_clip"))
    import open_clip.model as open_clip_model
    from ldm.modules.encoders import modules as encoders

    HFCLIPTextModel = load_hf_clip(os.path.join(args.upstream, "transformers"))

    # CLIP's tokenizer cut to the tiny vocabulary: bytes, bytes + </w>, the first 486 merges, then the specials.
    sys.path.insert(0, os.path.join(args.clip_repo, "clip"))
    import simple_tokenizer

    with gzip.open(os.path.join(args.clip_repo, "clip/bpe_simple_vocab_16e6.txt.gz")) as f:
        lines = f.read().decode("utf-8").split("\n")
    scratch = tempfile.mkdtemp()
    cut = os.path.join(scratch, "tiny-bpe.txt.gz")
    with gzip.open(cut, "wb") as f:
        f.write("\n".join(lines[: 1 + VOCAB - 2 - 512]).encode("utf-8"))
    tokenizer = simple_tokenizer.SimpleTokenizer(cut)
    START, END = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    assert (START, END, len(tokenizer.encoder)) == (VOCAB - 2, VOCAB - 1, VOCAB)
    comma = tokenizer.encoder[",</w>"]

    folder = os.path.join(OUT, "embeddings")
    write_embeddings(folder)
    files = sorted(os.listdir(folder))
    VECTORS = {os.path.splitext(f)[0]: read_embedding(os.path.join(folder, f)) for f in files}
    usable = [name for name in VECTORS if VECTORS[name].shape[1] == 32]
    # Ids of the vectors: after the vocabulary, embeddings in the order the folder lists them.
    first_id, next_id = {}, VOCAB
    for name in usable:
        first_id[name] = next_id
        next_id += VECTORS[name].shape[0]
    triggers = sorted(((name, tokenizer.encode(name)) for name in usable), key=lambda t: -len(t[1]))

    cases, tensors = [], {}
    for model_name, skips in [("tiny-sd1", [1, 2]), ("tiny-sd2", [None])]:
        config = yaml.safe_load(open(os.path.join(FIXTURES, f"dumps/{model_name}.yaml")))
        checkpoint, _ = load_file(os.path.join(FIXTURES, f"dumps/{model_name}.safetensors"))
        cond = config["model"]["params"]["cond_stage_config"]
        text = cond["params"]["text_config"]
        openclip = cond["target"].endswith("FrozenOpenCLIPEmbedder")
        if openclip:
            clip = open_clip_model.CLIP(
                embed_dim=text["projection_dim"],
                vision_cfg={"layers": 1, "width": 64, "head_width": 32, "patch_size": 16, "image_size": 32},
                text_cfg={"context_length": text["max_position_embeddings"], "vocab_size": text["vocab_size"],
                          "width": text["hidden_size"], "heads": text["num_attention_heads"],
                          "layers": text["num_hidden_layers"]},
            ).eval()
            del clip.visual
            clip.load_state_dict(prefixed(checkpoint, "cond_stage_model.model."), strict=True)
            wrapper = EmbeddingsWithFixes(clip.token_embedding)
            clip.token_embedding = wrapper
            embedder = types.SimpleNamespace(model=clip, layer_idx=0 if cond["params"].get("layer") == "last" else 1)
            embedder.text_transformer_forward = partial(encoders.FrozenOpenCLIPEmbedder.text_transformer_forward, embedder)
            encoders_for_skip = {None: lambda ids: encoders.FrozenOpenCLIPEmbedder.encode_with_transformer(embedder, ids)}
        else:
            hf_config = types.SimpleNamespace(attention_dropout=0.0, initializer_factor=1.0, output_attentions=False,
                                              output_hidden_states=False, use_return_dict=True, **text)
            clip = HFCLIPTextModel(hf_config).eval()
            clip.load_state_dict(prefixed(checkpoint, "cond_stage_model.transformer."), strict=True)
            wrapper = EmbeddingsWithFixes(clip.text_model.embeddings.token_embedding)
            clip.text_model.embeddings.token_embedding = wrapper

            def encode(ids, skip):
                out = clip(input_ids=ids, output_hidden_states=True)
                return out.last_hidden_state if skip == 1 else clip.text_model.final_layer_norm(out.hidden_states[-skip])

            encoders_for_skip = {skip: partial(encode, skip=skip) for skip in skips}
        for skip in skips:
            for prompt in PROMPTS if skip in (1, None) else PROMPTS[:2]:
                chunks, count = chunk_prompt(prompt, tokenizer, triggers, comma)
                z = encode_chunks(chunks, encoders_for_skip[skip], wrapper, openclip)
                ids = [[first_id[e[1]] + e[2] if isinstance(e, tuple) else e for e in entries] for entries, _ in chunks]
                if openclip:
                    ids = [row[: row.index(END) + 1] + [0] * (len(row) - row.index(END) - 1) for row in ids]
                name = f"z{len(tensors)}"
                tensors[f"conditioning.out.{name}"] = z.to(torch.float32).contiguous()
                used = sorted({e[1] for entries, _ in chunks for e in entries if isinstance(e, tuple)})
                cases.append({"model": model_name, "clip_skip": skip, "prompt": prompt, "ids": ids,
                              "multipliers": [w for _, w in chunks], "token_count": count, "embeddings": used,
                              "tensor": name})

    with open(os.path.join(OUT, "embeddings.json"), "w") as f:
        embeddings = [{"file": f_, "name": os.path.splitext(f_)[0], "vectors": VECTORS[os.path.splitext(f_)[0]].shape[0],
                       "width": VECTORS[os.path.splitext(f_)[0]].shape[1]} for f_ in files]
        json.dump({"torch": torch.__version__, "vocab": VOCAB, "embeddings": embeddings, "cases": cases}, f)
        f.write("\n")
    save_file(tensors, os.path.join(OUT, "embedding-conditioning.safetensors"))
    print("wrote", len(files), "embeddings and", len(cases), "conditionings")


if __name__ == "__main__":
    main()

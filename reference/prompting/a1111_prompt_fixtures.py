"""Golden file packages/ldm/test/fixtures/prompts/a1111-prompts.json: AUTOMATIC1111's own prompt code on a corpus.

    /usr/bin/python3 reference/prompting/a1111_prompt_fixtures.py --a1111 /tmp/a1111-ref --clip-repo /tmp/clip-ref

/tmp/a1111-ref holds AUTOMATIC1111/stable-diffusion-webui's modules/prompt_parser.py, sd_hijack_clip.py and
sd_emphasis.py; /tmp/clip-ref holds openai/CLIP's clip/ (for SimpleTokenizer). Run at generation time, never
committed:
- prompt_parser.parse_prompt_attention (emphasis, escapes, BREAK), imported with the module's other imports
  (lark) stood in;
- FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line (75-token chunks, comma backtrack 20, BREAK) and
  process_tokens (SD2's 0-padding after the first end token, then the "Original" emphasis of sd_emphasis),
  taken from sd_hijack_clip.py with `ast` and bound to a stand-in `self` whose tokenizer is openai/CLIP's
  SimpleTokenizer (A1111 uses Hugging Face's CLIPTokenizer, which gives the same ids on these prompts) and whose
  text encoder is this repository's reference CLIP (ldm_ref/clip.py) with the tiny fixtures' weights.
Textual-inversion embeddings are off (embedding_db finds none).

Output: for every prompt, the parse and the chunks (ids, multipliers) for SD1 (pad = end) and SD2 (pad = 0), and
the token count; for a few prompts the conditioning (float32, in a1111-conditioning.safetensors) of tiny-sd1 and tiny-sd2 (chunk ids mapped into the tiny
vocabularies: start → V−2, end → V−1, others id mod (V−2); CLIP skip 1 and 2 for tiny-sd1).
"""

import argparse
import ast
import json
import os
import sys
import types

import torch
import yaml

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from ldm_ref.ldm import LatentDiffusion  # noqa: E402
from ldm_ref.safetensors_io import load_file, save_file  # noqa: E402

FIXTURES = os.path.join(HERE, "../../packages/ldm/test/fixtures")

PROMPTS = [
    "",
    "a photo of a cat",
    "an (important) word",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "((masterpiece)), [[blurry]], (best quality:1.4), (worst quality:0.6)",
    "(unbalanced",
    "[unbalanced square",
    "closing) without] opening",
    r"\(literal\] brackets \[ and \) escaped",
    r"a backslash \\ and a lone \ one",
    "(unnecessary)(parens)",
    "weights (a:1) (b:0) (c:-0.5) (d:+2) (e:.5)",
    "colon: not a weight (x: 1.2) (y:1.2 ) z:",
    "nested ((a (b:2) c)) [d [e] f]",
    "first part BREAK second part",
    "BREAK at the start and the end BREAK",
    "two BREAK BREAK breaks, BREAKfast is not one, nor is aBREAK",
    "(emphasis BREAK inside) brackets",
    "a beautiful oil painting of a lighthouse on a cliff at sunset, " * 6,
    "x " * 74 + "y",
    "x " * 75 + "y",
    "x " * 76 + "y",
    "word " * 70 + ", after a comma near the end " + "more " * 10,
    "word " * 50 + ", a comma too far back " + "more " * 30,
    ("masterpiece, best quality, (detailed:1.2), " * 8) + "[lowres], (bad anatomy:0.8)",
    "portrait of a woman, " * 3 + "BREAK " + "landscape, mountains, " * 3,
    "a" + ", b" * 80,
]
CONDITIONING_PROMPTS = [
    "a photo of a cat",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "first part BREAK (second part:1.5)",
]


def install_stand_ins() -> None:
    """lark (prompt_parser's schedule grammar, unused here) and ftfy (identity, as the tokenizer fixtures)."""
    for name in ["lark", "ftfy"]:
        module = types.ModuleType(name)
        module.fix_text = lambda text: text
        module.Lark = module.Transformer = module.Visitor = module.Tree = object
        module.v_args = lambda **kwargs: (lambda f: f)
        sys.modules[name] = module


def load_module(path, name):
    source = open(path).read()
    module = types.ModuleType(name)
    module.__file__ = path
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def load_methods(a1111):
    """tokenize_line and process_tokens of FrozenCLIPEmbedderWithCustomWordsBase, without the module's imports."""
    prompt_parser = load_module(os.path.join(a1111, "modules/prompt_parser.py"), "prompt_parser")
    sd_emphasis = load_module(os.path.join(a1111, "modules/sd_emphasis.py"), "sd_emphasis")
    source = open(os.path.join(a1111, "modules/sd_hijack_clip.py")).read()
    namespace = {
        "torch": torch, "math": __import__("math"), "prompt_parser": prompt_parser, "sd_emphasis": sd_emphasis,
        "devices": types.SimpleNamespace(device=torch.device("cpu")),
        "opts": types.SimpleNamespace(emphasis="Original", comma_padding_backtrack=20),
    }
    methods = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == "PromptChunk":
            exec(compile(ast.Module(body=[node], type_ignores=[]), "sd_hijack_clip.py", "exec"), namespace)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PromptChunkFix" for t in node.targets):
            exec(compile(ast.Module(body=[node], type_ignores=[]), "sd_hijack_clip.py", "exec"),
                 {**namespace, "namedtuple": __import__("collections").namedtuple})
        if isinstance(node, ast.ClassDef) and node.name == "FrozenCLIPEmbedderWithCustomWordsBase":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in ("tokenize_line", "process_tokens", "empty_chunk"):
                    exec(compile(ast.Module(body=[item], type_ignores=[]), "sd_hijack_clip.py", "exec"), namespace)
                    methods[item.name] = namespace[item.name]
    namespace["PromptChunkFix"] = lambda offset, embedding: (offset, embedding)
    return prompt_parser.parse_prompt_attention, methods


class StandIn:
    """The `self` tokenize_line and process_tokens read: ids, comma, tokenizer, text encoder, no embeddings."""

    def __init__(self, methods, tokenizer, id_start, id_end, id_pad, comma, encode=None):
        self.chunk_length = 75
        self.id_start, self.id_end, self.id_pad, self.comma_token = id_start, id_end, id_pad, comma
        self._tokenizer = tokenizer
        self._encode = encode
        self.hijack = types.SimpleNamespace(embedding_db=types.SimpleNamespace(
            find_embedding_at_position=lambda tokens, position: (None, None)))
        for name, fn in methods.items():
            setattr(self, name, types.MethodType(fn, self))

    def tokenize(self, texts):
        return [self._tokenizer.encode(text) for text in texts]

    def encode_with_transformers(self, tokens):
        return self._encode(tokens)


def chunk_record(self, prompt):
    chunks, token_count = self.tokenize_line(prompt)
    ids = []
    for chunk in chunks:
        row = list(chunk.tokens)
        if self.id_end != self.id_pad:
            row[row.index(self.id_end) + 1:] = [self.id_pad] * (len(row) - row.index(self.id_end) - 1)
        ids.append(row)
    return {"ids": ids, "multipliers": [list(c.multipliers) for c in chunks], "token_count": token_count}


def tiny_model(name):
    config = yaml.safe_load(open(os.path.join(FIXTURES, f"dumps/{name}.yaml")))
    checkpoint, _ = load_file(os.path.join(FIXTURES, f"dumps/{name}.safetensors"))
    model = LatentDiffusion(config).eval()
    model.load_checkpoint_state_dict({k: v.float() if v.is_floating_point() else v for k, v in checkpoint.items()})
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--a1111", required=True)
    parser.add_argument("--clip-repo", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    install_stand_ins()
    # simple_tokenizer.py alone (the package __init__ imports the model code).
    simple = load_module(os.path.join(args.clip_repo, "clip/simple_tokenizer.py"), "simple_tokenizer")
    tokenizer = simple.SimpleTokenizer(os.path.join(args.clip_repo, "clip/bpe_simple_vocab_16e6.txt.gz"))
    start, end = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    comma = tokenizer.encoder[",</w>"]
    parse, methods = load_methods(args.a1111)
    sd1 = StandIn(methods, tokenizer, start, end, end, comma)
    sd2 = StandIn(methods, tokenizer, start, end, 0, comma)
    cases = [{"prompt": p, "parsed": parse(p), "sd1": chunk_record(sd1, p), "sd2": chunk_record(sd2, p)} for p in PROMPTS]

    conditioning = []
    tensors = {}
    for name, skips in [("tiny-sd1", [1, 2]), ("tiny-sd2", [None])]:
        model = tiny_model(name)
        vocab = model.cond_stage_model.transformer.config["vocab_size"]
        openclip = model.cond_stage_model.openclip
        for skip in skips:
            def encode(tokens, skip=skip):
                with torch.no_grad():
                    out = model.cond_stage_model.transformer(tokens)
                    if skip is None:
                        return model.cond_stage_model(tokens)
                    return out["last_hidden_state" if skip == 1 else "penultimate_hidden_state"]

            mapped = {start: vocab - 2, end: vocab - 1}
            for prompt in CONDITIONING_PROMPTS:
                record = chunk_record(sd2 if openclip else sd1, prompt)
                ids = [[mapped.get(i, i % (vocab - 2)) if i != 0 or not openclip else 0 for i in row]
                       for row in record["ids"]]
                self = StandIn(methods, tokenizer, vocab - 2, vocab - 1, 0 if openclip else vocab - 1, None, encode)
                with torch.no_grad():
                    z = torch.hstack([self.process_tokens([row], [mult]) for row, mult in zip(ids, record["multipliers"])])
                conditioning.append({
                    "model": name, "clip_skip": skip, "prompt": prompt, "ids": ids,
                    "multipliers": record["multipliers"], "tensor": f"z{len(tensors)}",
                })
                tensors[f"conditioning.out.z{len(tensors)}"] = z.to(torch.float32).contiguous()

    out_dir = os.path.join(FIXTURES, "prompts")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "a1111-prompts.json"), "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases, "conditioning": conditioning}, f, ensure_ascii=False)
        f.write("\n")
    save_file(tensors, os.path.join(out_dir, "a1111-conditioning.safetensors"))
    print("wrote", len(cases), "prompts,", len(conditioning), "conditionings")


if __name__ == "__main__":
    main()

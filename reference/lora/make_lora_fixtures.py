"""LoRA fixtures: random LoRA files for tiny-sd1 and tiny-sd2 in kohya's and diffusers/PEFT's names, and the
weights and outputs of the models with them merged, computed here with PyTorch, independently of ldm.ts.

For each model, into packages/ldm/test/fixtures/lora/:
  <model>.kohya.safetensors     kohya names (lora_unet_*, lora_te_* / lora_te1_*, .lora_down/.lora_up/.alpha),
                                float16 factors: attention q/k/v/out, feed-forward, proj_in/proj_out (1x1
                                convolutions in SD1, linear in SD2), LoCon 3x3 convolutions (resblock conv1,
                                downsampler, upsampler, conv_in/conv_out), 1x1 conv_shortcut, time embeddings,
                                text-encoder q/k/v/out and mlp fc1/fc2
  <model>.peft.safetensors      diffusers/PEFT names (unet.* / text_encoder.*, .lora_A/.lora_B), float32, no alpha,
                                some modules the same as the kohya file's (two LoRAs on one weight)
  <model>.expected.safetensors  `merged.<checkpoint key>`: every weight the two LoRAs touch after merging both
                                (kohya at STRENGTHS["kohya"], then PEFT at STRENGTHS["peft"]: text encoder and UNet
                                multipliers), float32 (those of at most MAX_STORED elements), in the checkpoint's own names (SD2's text encoder in
                                OpenCLIP's, q/k/v as row slices of the fused in_proj_weight); the reference UNet
                                and text encoder (ldm_ref) run on the merged weights: unet.in.*/unet.out.eps,
                                clip.in.input_ids/clip.out.{last,penultimate}_hidden_state

Merging follows AUTOMATIC1111's LoRA: W += multiplier * (alpha / rank) * up @ down (flattened to matrices and
reshaped to W; alpha = rank without an .alpha key), in float32 from the checkpoint's stored weights.
The diffusers -> original names below are stated per module (the facts diffusers' conversion script encodes);
ldm.ts derives them from the architecture instead.

Usage: /usr/bin/python3 reference/lora/make_lora_fixtures.py   (~2 s; byte-identical on re-run)
"""

import json
import os
import sys

sys.dont_write_bytecode = True

import torch  # noqa: E402
import yaml  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from ldm_ref.ldm import LatentDiffusion  # noqa: E402
from ldm_ref.safetensors_io import load_file, save_file  # noqa: E402

DUMPS = os.path.join(HERE, "..", "..", "packages", "ldm", "test", "fixtures", "dumps")
OUT = os.path.join(HERE, "..", "..", "packages", "ldm", "test", "fixtures", "lora")
RANK = 4
MAX_STORED = 9216
STRENGTHS = {"kohya": {"text": 0.8, "unet": 0.8}, "peft": {"text": 0.5, "unet": -0.7}}

UNET = "model.diffusion_model."
# tiny-sd1 / tiny-sd2: one residual block per level, two levels, transformers at level 0 only. diffusers' down
# block 0 / up block 1 are level 0 (with attentions), down block 1 / up block 0 level 1.
ORIGINAL = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0": "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj": "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2": "input_blocks.1.1.transformer_blocks.0.ff.net.2",
    "down_blocks.0.attentions.0.proj_in": "input_blocks.1.1.proj_in",
    "up_blocks.1.attentions.1.proj_out": "output_blocks.3.1.proj_out",
    "down_blocks.0.resnets.0.conv1": "input_blocks.1.0.in_layers.2",
    "down_blocks.0.resnets.0.time_emb_proj": "input_blocks.1.0.emb_layers.1",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.2.0.op",
    "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.3.0.skip_connection",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_v": "middle_block.1.transformer_blocks.0.attn2.to_v",
    "mid_block.resnets.1.time_emb_proj": "middle_block.2.emb_layers.1",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.1.1.conv",
    "up_blocks.1.resnets.0.conv1": "output_blocks.2.0.in_layers.2",
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "conv_out": "out.2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0": "output_blocks.2.1.transformer_blocks.0.attn2.to_out.0",
    "up_blocks.0.resnets.1.time_emb_proj": "output_blocks.1.0.emb_layers.1",
    "mid_block.attentions.0.proj_in": "middle_block.1.proj_in",
}
UNET_KOHYA = list(ORIGINAL)[:18]
UNET_PEFT = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.resnets.0.conv1",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "up_blocks.0.resnets.1.time_emb_proj",
    "mid_block.attentions.0.proj_in",
]
TEXT_KOHYA = [
    "encoder.layers.0.self_attn.q_proj",
    "encoder.layers.0.self_attn.k_proj",
    "encoder.layers.0.self_attn.v_proj",
    "encoder.layers.0.self_attn.out_proj",
    "encoder.layers.2.mlp.fc1",
    "encoder.layers.2.mlp.fc2",
]
TEXT_PEFT = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.self_attn.v_proj", "encoder.layers.2.mlp.fc2"]


def text_target(module, openclip, width):
    """(checkpoint key, rows) of a Hugging Face CLIPTextModel module: SD1 stores it under its own name, SD2's
    OpenCLIP stacks q, k and v in the rows of resblocks.i.attn.in_proj_weight."""
    if not openclip:
        return f"cond_stage_model.transformer.text_model.{module}.weight", None
    layer, rest = module.split(".")[2], ".".join(module.split(".")[3:])
    base = f"cond_stage_model.model.transformer.resblocks.{layer}."
    qkv = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
    if rest in qkv:
        i = qkv[rest]
        return base + "attn.in_proj_weight", (i * width, (i + 1) * width)
    names = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    return base + names[rest] + ".weight", None


def factors(generator, weight_shape, rows):
    """Random down [r, in, kh, kw] (or [r, in] for a linear layer) and up [out, r, 1, 1] (or [out, r])."""
    out = rows[1] - rows[0] if rows else weight_shape[0]
    in_shape = list(weight_shape[1:])
    down = torch.randn([RANK] + in_shape, generator=generator) * 0.3
    up = torch.randn([out, RANK] + [1] * (len(weight_shape) - 2), generator=generator) * 0.3
    return down, up


def merge_(state, key, rows, down, up, alpha, multiplier):
    """A1111's merge of one module into state[key] (float32)."""
    weight = state[key]
    scale = (alpha if alpha is not None else down.shape[0]) / down.shape[0]
    target = weight[rows[0] : rows[1]] if rows else weight
    delta = (up.float().flatten(1) @ down.float().flatten(1)).reshape(target.shape)
    target += multiplier * scale * delta


def make(name):
    config = yaml.safe_load(open(os.path.join(DUMPS, f"{name}.yaml")))
    stored, _ = load_file(os.path.join(DUMPS, f"{name}.safetensors"))
    openclip = config["model"]["params"]["cond_stage_config"]["target"].endswith("FrozenOpenCLIPEmbedder")
    width = config["model"]["params"]["cond_stage_config"]["params"]["text_config"]["hidden_size"]
    generator = torch.Generator().manual_seed(2312 if openclip else 2311)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in stored.items()}
    touched = set()
    te_prefix = "lora_te1_" if openclip else "lora_te_"

    kohya, peft = {}, {}
    plan = []  # (file, strengths kind, module key in file, checkpoint key, rows, component)
    for diffusers in UNET_KOHYA:
        module = "lora_unet_" + diffusers.replace(".", "_")
        plan.append((kohya, "kohya", module, UNET + ORIGINAL[diffusers] + ".weight", None, "unet"))
    for module in TEXT_KOHYA:
        key, rows = text_target(module, openclip, width)
        plan.append((kohya, "kohya", te_prefix + ("text_model." + module).replace(".", "_"), key, rows, "text"))
    for diffusers in UNET_PEFT:
        plan.append((peft, "peft", "unet." + diffusers, UNET + ORIGINAL[diffusers] + ".weight", None, "unet"))
    for module in TEXT_PEFT:
        key, rows = text_target(module, openclip, width)
        plan.append((peft, "peft", "text_encoder.text_model." + module, key, rows, "text"))

    for i, (file, kind, module, key, rows, component) in enumerate(plan):
        down, up = factors(generator, tuple(state[key].shape), rows)
        if kind == "kohya":
            # Every other module without alpha (A1111: alpha = rank); the others with a stored alpha.
            alpha = None if i % 2 else float(RANK) / 2 + i % 3
            file[module + ".lora_down.weight"] = down.half()
            file[module + ".lora_up.weight"] = up.half()
            if alpha is not None:
                file[module + ".alpha"] = torch.tensor(alpha, dtype=torch.float16)
            down, up = down.half(), up.half()
        else:
            alpha = None
            file[module + ".lora_A.weight"] = down
            file[module + ".lora_B.weight"] = up
        merge_(state, key, rows, down, up, alpha, STRENGTHS[kind][component])
        touched.add(key)

    os.makedirs(OUT, exist_ok=True)
    save_file(kohya, os.path.join(OUT, f"{name}.kohya.safetensors"), metadata={"ss_output_name": f"{name}-kohya"})
    save_file(peft, os.path.join(OUT, f"{name}.peft.safetensors"))

    # The two largest weights (the 3x3 upsampler and output block conv) are left out to keep the file small;
    # unet.out.eps covers them.
    expected = {f"merged.{k}": state[k].contiguous() for k in sorted(touched) if state[k].numel() <= MAX_STORED}
    model = LatentDiffusion(config).eval()
    model.load_checkpoint_state_dict(state)
    inputs = torch.Generator().manual_seed(7)
    x = torch.randn((1, 4, 8, 8), generator=inputs)
    t = torch.tensor([411])
    context = torch.randn((1, 77, 32), generator=inputs)
    vocab = config["model"]["params"]["cond_stage_config"]["params"]["text_config"]["vocab_size"]
    words = torch.randint(1, vocab - 2, (9,), generator=inputs).tolist()
    pad = 0 if openclip else vocab - 1
    ids = torch.tensor([[vocab - 2] + words + [vocab - 1] + [pad] * (77 - 11)])
    with torch.no_grad():
        eps = model.apply_model(x, t, context)
        clip = model.cond_stage_model.transformer(ids)
    expected.update(
        {
            "unet.in.x": x,
            "unet.in.timesteps": t.float(),
            "unet.in.context": context,
            "unet.out.eps": eps,
            "clip.in.input_ids": ids.int(),
            "clip.out.last_hidden_state": clip["last_hidden_state"],
            "clip.out.penultimate_hidden_state": clip["penultimate_hidden_state"],
        }
    )
    metadata = {"strengths": json.dumps(STRENGTHS), "torch_version": torch.__version__}
    save_file(expected, os.path.join(OUT, f"{name}.expected.safetensors"), metadata=metadata)
    print(f"{name}: {len(kohya)} kohya tensors, {len(peft)} PEFT tensors, {len(touched)} merged weights")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for model_name in ("tiny-sd1", "tiny-sd2"):
        make(model_name)

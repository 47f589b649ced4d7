// A user's Node script: the built-in model through the library, one image to a PNG file.
// node generate.mjs <prompt> <seed> <steps> <out.png>
import { writeFileSync } from "node:fs";
import { BUILTIN_MODEL, encodePng, StableDiffusion } from "@ldm/ldm/node";

const [prompt, seed, steps, out] = process.argv.slice(2);
const pipe = await StableDiffusion.load(BUILTIN_MODEL);
try {
  const { images } = await pipe.txt2img({
    prompt,
    seed: Number(seed),
    steps: Number(steps),
    sampler: "ddim",
    guidanceScale: 7.5,
  });
  writeFileSync(out, encodePng(images[0]));
} finally {
  pipe.dispose();
}

import { readFile, writeFile } from "node:fs/promises";
import { type DecodedImage, decodePng, encodePng, type RgbaImage } from "./png.ts";

/** Reads a PNG file as RGBA; `what` names it in errors ("init image"). */
export async function readPngFile(path: string, what: string): Promise<DecodedImage> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new Error(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return decodePng(bytes, `${what} ${path}`);
}

export async function writePngFile(path: string, image: RgbaImage, text: Record<string, string> = {}): Promise<void> {
  await writeFile(path, encodePng(image, text));
}

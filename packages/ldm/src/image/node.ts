import { readFile, writeFile } from "node:fs/promises";
import { type DecodedImage, decodeLabelPng, decodePng, encodePng, type LabelMap, type RgbaImage } from "./png.ts";

async function readBytes(path: string, what: string): Promise<Uint8Array> {
  try {
    return await readFile(path);
  } catch (e) {
    throw new Error(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** Reads a PNG file as RGBA; `what` names it in errors ("init image"). */
export async function readPngFile(path: string, what: string): Promise<DecodedImage> {
  return decodePng(await readBytes(path, what), `${what} ${path}`);
}

/** Reads a segmentation map (an index or palette PNG, see decodeLabelPng); `what` names it in errors. */
export async function readLabelPngFile(path: string, what: string): Promise<LabelMap> {
  return decodeLabelPng(await readBytes(path, what), `${what} ${path}`);
}

export async function writePngFile(path: string, image: RgbaImage, text: Record<string, string> = {}): Promise<void> {
  await writeFile(path, encodePng(image, text));
}

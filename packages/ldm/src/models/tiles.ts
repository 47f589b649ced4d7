/** Tiling of a latent for VAE decoding, and blending of the decoded tiles (host side). */

export interface TileOptions {
  /** Tile edge in latent cells (64 = 512 pixels for SD). */
  tileSize: number;
  /** Latent cells shared by neighbouring tiles; the blend ramps across them. */
  overlap: number;
}

export interface Tile {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** Tile starts along one axis: evenly spread, the first at 0 and the last ending at `size`. */
function axisStarts(size: number, tile: number, overlap: number): number[] {
  if (size <= tile) return [0];
  const count = Math.ceil((size - overlap) / (tile - overlap));
  return Array.from({ length: count }, (_, i) => Math.round((i * (size - tile)) / (count - 1)));
}

export function planTiles(height: number, width: number, options: TileOptions): Tile[] {
  const { tileSize, overlap } = options;
  if (!Number.isInteger(tileSize) || tileSize < 1) throw new Error(`VAE tiling: tile size ${tileSize} must be ≥ 1`);
  if (!Number.isInteger(overlap) || overlap < 0 || overlap >= tileSize) {
    throw new Error(`VAE tiling: overlap ${overlap} must be an integer in [0, tile size ${tileSize})`);
  }
  const tiles: Tile[] = [];
  for (const y of axisStarts(height, tileSize, overlap)) {
    for (const x of axisStarts(width, tileSize, overlap)) {
      tiles.push({ x, y, width: Math.min(tileSize, width), height: Math.min(tileSize, height) });
    }
  }
  return tiles;
}

/**
 * Weights of one tile along an axis (pixels; every tile on the axis is `length` long): rising linearly across the part shared with the tile before
 * it, falling across the part shared with the tile after it, 1 elsewhere; never 0, so every pixel has weight.
 */
function axisWeights(start: number, length: number, starts: number[]): Float32Array {
  const i = starts.indexOf(start);
  const before = i > 0 ? starts[i - 1] + length - start : 0;
  const after = i < starts.length - 1 ? start + length - starts[i + 1] : 0;
  const weights = new Float32Array(length);
  for (let p = 0; p < length; p++) {
    const rise = before > 0 ? (p + 0.5) / before : 1;
    const fall = after > 0 ? (length - p - 0.5) / after : 1;
    weights[p] = Math.min(1, rise, fall);
  }
  return weights;
}

export interface BlendGeometry {
  batch: number;
  channels: number;
  /** Latent size. */
  height: number;
  width: number;
  /** Pixels per latent cell. */
  scale: number;
}

/**
 * Σ wₜ·tileₜ / Σ wₜ over the decoded tiles ([B, C, tile.height·scale, tile.width·scale] each) into one image
 * [B, C, height·scale, width·scale]. Where the tiles agree the result equals them exactly.
 */
export function blendTiles(decoded: readonly Float32Array[], tiles: readonly Tile[], g: BlendGeometry): Float32Array {
  const { batch, channels, scale } = g;
  const outH = g.height * scale;
  const outW = g.width * scale;
  const ys = [...new Set(tiles.map((t) => t.y))];
  const xs = [...new Set(tiles.map((t) => t.x))];
  const sum = new Float32Array(batch * channels * outH * outW);
  const weightSum = new Float32Array(outH * outW);
  tiles.forEach((t, k) => {
    const th = t.height * scale;
    const tw = t.width * scale;
    const wy = axisWeights(
      t.y * scale,
      th,
      ys.map((y) => y * scale),
    );
    const wx = axisWeights(
      t.x * scale,
      tw,
      xs.map((x) => x * scale),
    );
    const data = decoded[k];
    if (data.length !== batch * channels * th * tw) {
      throw new Error(`VAE tiling: tile ${k} has ${data.length} values, expected ${batch * channels * th * tw}`);
    }
    for (let py = 0; py < th; py++) {
      for (let px = 0; px < tw; px++) {
        const weight = wy[py] * wx[px];
        const at = (t.y * scale + py) * outW + t.x * scale + px;
        weightSum[at] += weight;
        for (let plane = 0; plane < batch * channels; plane++) {
          sum[plane * outH * outW + at] += weight * data[(plane * th + py) * tw + px];
        }
      }
    }
  });
  for (let plane = 0; plane < batch * channels; plane++) {
    for (let at = 0; at < outH * outW; at++) sum[plane * outH * outW + at] /= weightSum[at];
  }
  return sum;
}

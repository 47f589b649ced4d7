/**
 * Folds a 1-D count of workgroups into a 2-D grid that respects the per-dimension cap
 * (65,535 in WebGPU). The shader recovers the linear id as `wid.x + wid.y * nx`
 * (see `LINEAR_WORKGROUP_ID`) and must skip ids ≥ the true count, since x·y may exceed it.
 */
export function foldGrid(workgroups: number, maxPerDimension = 65535): [number, number, number] {
  if (!Number.isInteger(workgroups) || workgroups < 0)
    throw new Error(`foldGrid: invalid workgroup count ${workgroups}`);
  if (workgroups <= maxPerDimension) return [workgroups, 1, 1];
  const y = Math.ceil(workgroups / maxPerDimension);
  if (y > maxPerDimension)
    throw new Error(`foldGrid: ${workgroups} workgroups exceed ${maxPerDimension}² even when folded`);
  const x = Math.ceil(workgroups / y);
  return [x, y, 1];
}

/** WGSL expression for the linear workgroup index of a grid folded by foldGrid (needs `wid` and `nwg` builtins). */
export const LINEAR_WORKGROUP_ID = "(wid.x + wid.y * nwg.x)";

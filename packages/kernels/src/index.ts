export { foldGrid, LINEAR_WORKGROUP_ID } from "./common/grid.ts";
export { assertBindable, assertDType, wgslEnables, wgslType } from "./common/wgsl.ts";

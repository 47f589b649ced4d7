const STATE_SIZE = 624;
const SHIFT_SIZE = 397;
const MATRIX_A = 0x9908b0df;
const UPPER_MASK = 0x80000000;
const LOWER_MASK = 0x7fffffff;

/**
 * The 32-bit Mersenne Twister, seeded the way PyTorch's CPU generator seeds it: `manual_seed(seed)` keeps only the
 * low 32 bits of the 64-bit seed (at::mt19937's init_with_uint32), so seeds differing only above bit 31 give the
 * same stream — in PyTorch too.
 */
export class Mt19937 {
  private readonly state = new Uint32Array(STATE_SIZE);
  private next = 0;
  private left = 1;

  constructor(seed: bigint) {
    const state = this.state;
    state[0] = Number(BigInt.asUintN(32, seed));
    for (let j = 1; j < STATE_SIZE; j++) {
      const prev = state[j - 1];
      state[j] = Math.imul(1812433253, prev ^ (prev >>> 30)) + j;
    }
  }

  /** The next 32-bit output, as an unsigned integer. */
  nextUint32(): number {
    if (--this.left === 0) this.twist();
    let y = this.state[this.next++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  private twist(): void {
    const state = this.state;
    const mix = (upper: number, lower: number): number => {
      const y = (upper & UPPER_MASK) | (lower & LOWER_MASK);
      return (y >>> 1) ^ (lower & 1 ? MATRIX_A : 0);
    };
    let k = 0;
    for (; k < STATE_SIZE - SHIFT_SIZE; k++) state[k] = state[k + SHIFT_SIZE] ^ mix(state[k], state[k + 1]);
    for (; k < STATE_SIZE - 1; k++) state[k] = state[k + SHIFT_SIZE - STATE_SIZE] ^ mix(state[k], state[k + 1]);
    state[STATE_SIZE - 1] = state[SHIFT_SIZE - 1] ^ mix(state[STATE_SIZE - 1], state[0]);
    this.left = STATE_SIZE;
    this.next = 0;
  }
}

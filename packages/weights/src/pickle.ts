import type { StoredDType } from "./dtype.ts";

/**
 * A pickle interpreter that builds data and never calls anything. Python's unpickler runs whatever callables a
 * pickle names; this one knows the opcodes of protocols 2–5 that torch.save writes and a fixed table of
 * globals (ALLOWED_GLOBALS), each evaluated here by our own code: an OrderedDict becomes a PyDict, a
 * `_rebuild_tensor_v2` call a TorchTensor (a view description, no data), a `torch.*Storage` class names a
 * dtype. Any other global stops the load at the opcode that names it.
 */

export class PickleError extends Error {}

/** A pickle that ends before its STOP: the caller may retry with more bytes (legacy files). */
export class TruncatedPickleError extends PickleError {}

export class PyTuple {
  constructor(readonly items: readonly PyValue[]) {}
}

/** A dict or OrderedDict; keys are compared as JavaScript Map keys (strings and numbers by value). */
export class PyDict {
  readonly map = new Map<PyValue, PyValue>();
}

/** A reference to an allowed global (a storage class, OrderedDict, a rebuild function) that was not called. */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
}

/** A storage named by a persistent id: its data lives outside the pickle (a zip entry, a legacy file's tail). */
export class TorchStorage {
  constructor(
    readonly key: string,
    readonly dtype: StoredDType,
    /** Elements, as the pickle declares them. */
    readonly numel: number,
    /** Legacy files: a storage that is a view of `key`'s storage, starting `offset` elements into it. */
    readonly offset = 0,
  ) {}
}

/** `_rebuild_tensor_v2`'s arguments: a strided view of a storage (elements, not bytes). */
export class TorchTensor {
  constructor(
    readonly storage: TorchStorage,
    readonly offset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
  ) {}
}

export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | PyTuple
  | PyDict
  | PyGlobal
  | TorchStorage
  | TorchTensor;

/** Storage classes of torch.save's persistent ids → element type. */
export const STORAGE_DTYPES: Readonly<Record<string, StoredDType>> = {
  FloatStorage: "F32",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  DoubleStorage: "F64",
  LongStorage: "I64",
  IntStorage: "I32",
  ShortStorage: "I16",
  CharStorage: "I8",
  ByteStorage: "U8",
  BoolStorage: "BOOL",
};

type Call = (args: readonly PyValue[], where: string) => PyValue;

/** The only globals a checkpoint may name, and what calling each means here. */
const ALLOWED_GLOBALS: Readonly<Record<string, Call | null>> = {
  "collections.OrderedDict": (args, where) => {
    if (args.length) throw new PickleError(`${where}: OrderedDict with arguments is not supported`);
    return new PyDict();
  },
  "torch._utils._rebuild_tensor_v2": rebuildTensor,
  "torch._utils._rebuild_parameter": (args, where) => tensorArg(args, where, 3),
  "torch._utils._rebuild_parameter_with_state": (args, where) => tensorArg(args, where, 4),
  // Layouts are pickled by name; only the dense one makes a tensor we can read.
  "torch.serialization._get_layout": (args, where) => {
    if (args.length !== 1 || args[0] !== "torch.strided") {
      throw new PickleError(`${where}: layout ${JSON.stringify(args[0])} is not supported (only torch.strided)`);
    }
    return "torch.strided";
  },
  // Storage classes are only named (in persistent ids), never called.
  ...Object.fromEntries(Object.keys(STORAGE_DTYPES).map((name) => [`torch.${name}`, null])),
};

/** The globals a checkpoint may name, for error messages and documentation. */
export const ALLOWED_GLOBAL_NAMES: readonly string[] = Object.keys(ALLOWED_GLOBALS);

function tensorArg(args: readonly PyValue[], where: string, arity: number): PyValue {
  if (args.length !== arity || !(args[0] instanceof TorchTensor)) {
    throw new PickleError(`${where}: expected (tensor, …) with ${arity} arguments`);
  }
  return args[0];
}

function rebuildTensor(args: readonly PyValue[], where: string): PyValue {
  // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  if (args.length !== 6 && args.length !== 7) {
    throw new PickleError(`${where}: _rebuild_tensor_v2 takes 6 or 7 arguments, got ${args.length}`);
  }
  const [storage, offset, size, stride] = args;
  if (!(storage instanceof TorchStorage)) throw new PickleError(`${where}: _rebuild_tensor_v2 without a storage`);
  const shape = intTuple(size, `${where}: tensor size`);
  const strides = intTuple(stride, `${where}: tensor stride`);
  if (shape.length !== strides.length) {
    throw new PickleError(`${where}: tensor size has ${shape.length} dimensions, its stride ${strides.length}`);
  }
  return new TorchTensor(storage, index(offset, `${where}: storage offset`), shape, strides);
}

function intTuple(v: PyValue, what: string): number[] {
  if (!(v instanceof PyTuple)) throw new PickleError(`${what} is not a tuple`);
  return v.items.map((item) => index(item, what));
}

/** A non-negative safe integer (sizes, strides, offsets, element counts). */
export function index(v: PyValue, what: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    throw new PickleError(`${what}: ${describeValue(v)} is not a non-negative integer`);
  }
  return v;
}

export function describeValue(v: PyValue): string {
  if (v === null) return "None";
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v !== "object") return String(v);
  if (v instanceof Uint8Array) return `bytes(${v.byteLength})`;
  if (Array.isArray(v)) return `a list of ${v.length}`;
  if (v instanceof PyTuple) return `a tuple of ${v.items.length}`;
  if (v instanceof PyDict) return `a dict of ${v.map.size}`;
  if (v instanceof PyGlobal) return `${v.module}.${v.name}`;
  return v instanceof TorchTensor ? "a tensor" : "a storage";
}

/** More open MARKs than this is no checkpoint (torch nests a few levels): refuse before anything grows. */
export const MAX_NESTING = 1000;
/** Values on the stack at once; torch's batches of SETITEMS/APPENDS put at most 2,000 there. */
export const MAX_STACK = 100_000;

export interface UnpickleOptions {
  /** Shown in errors. */
  origin: string;
  /** Resolves a persistent id (torch's storages); must not return undefined. */
  persistentLoad(pid: PyValue): PyValue;
}

export interface Unpickled {
  value: PyValue;
  /** Offset just past the STOP opcode (legacy files hold several pickles back to back). */
  end: number;
}

const MARK = Symbol("mark");
type Slot = PyValue | typeof MARK;

/** Runs the pickle starting at `start` of `bytes` up to its STOP. */
export function unpickle(bytes: Uint8Array, start: number, options: UnpickleOptions): Unpickled {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  const stack: Slot[] = [];
  const marks: number[] = [];
  const memo = new Map<number, PyValue>();
  let pos = start;
  let opStart = start;
  const where = () => `${options.origin}: pickle byte ${opStart}`;
  const fail = (what: string): never => {
    throw new PickleError(`${where()}: ${what}`);
  };
  const need = (n: number) => {
    if (pos + n > bytes.byteLength) {
      throw new TruncatedPickleError(
        `${options.origin}: the pickle is truncated: the opcode at byte ${opStart} needs ${n} more bytes, ${bytes.byteLength - pos} remain`,
      );
    }
  };
  const u8 = () => {
    need(1);
    return bytes[pos++];
  };
  const u16 = () => {
    need(2);
    pos += 2;
    return view.getUint16(pos - 2, true);
  };
  const u32 = () => {
    need(4);
    pos += 4;
    return view.getUint32(pos - 4, true);
  };
  const u64 = () => {
    need(8);
    pos += 8;
    const v = view.getUint32(pos - 8, true) + view.getUint32(pos - 4, true) * 2 ** 32;
    if (!Number.isSafeInteger(v)) fail(`length ${v} is out of range`);
    return v;
  };
  const take = (n: number) => {
    need(n);
    pos += n;
    return bytes.subarray(pos - n, pos);
  };
  const line = () => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) need(bytes.byteLength - pos + 1);
    const text = latin1.decode(bytes.subarray(pos, end));
    pos = end + 1;
    return text;
  };
  const text = (n: number) => {
    try {
      return utf8.decode(take(n));
    } catch (e) {
      if (e instanceof PickleError) throw e;
      return fail("a string is not valid UTF-8");
    }
  };
  const push = (v: PyValue) => {
    if (stack.length >= MAX_STACK) fail(`more than ${MAX_STACK} values on the stack (nesting too deep)`);
    stack.push(v);
  };
  const pop = (): PyValue => {
    const v = stack.pop();
    if (v === undefined || v === MARK) fail("stack underflow (the pickle is corrupt)");
    return v as PyValue;
  };
  const top = (): PyValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) fail("stack underflow (the pickle is corrupt)");
    return v as PyValue;
  };
  const popMark = (): PyValue[] => {
    const at = marks.pop();
    if (at === undefined) return fail("no MARK to pop to (the pickle is corrupt)");
    const items = stack.splice(at) as Slot[];
    if (items[0] !== MARK) fail("MARK stack out of step (the pickle is corrupt)");
    if (items.includes(MARK, 1)) fail("MARK stack out of step (the pickle is corrupt)");
    return items.slice(1) as PyValue[];
  };
  const memoGet = (i: number) => {
    const v = memo.get(i);
    if (v === undefined) fail(`memo index ${i} was never stored`);
    return v as PyValue;
  };
  const memoPut = (i: number) => {
    memo.set(i, top());
  };
  const global = (module: string, name: string): PyValue => {
    const full = `${module}.${name}`;
    if (!Object.hasOwn(ALLOWED_GLOBALS, full)) {
      fail(
        `refused global ${full}: a checkpoint is read as data, and only tensors, storages, OrderedDict and plain values are allowed`,
      );
    }
    return new PyGlobal(module, name);
  };
  const call = (callable: PyValue, args: PyValue, opcode: string): PyValue => {
    if (!(callable instanceof PyGlobal)) return fail(`${opcode} on ${describeValue(callable)}, not a global`);
    const fn = ALLOWED_GLOBALS[`${callable.module}.${callable.name}`];
    if (!fn) return fail(`${opcode} on ${callable.module}.${callable.name}, which is only a name here, never called`);
    if (!(args instanceof PyTuple)) return fail(`${opcode} arguments are ${describeValue(args)}, not a tuple`);
    return fn(args.items, where());
  };
  const setItems = (dict: PyValue, items: PyValue[]) => {
    if (!(dict instanceof PyDict)) fail(`SETITEMS on ${describeValue(dict)}, not a dict`);
    if (items.length % 2) fail("SETITEMS with an odd number of values");
    for (let i = 0; i < items.length; i += 2) (dict as PyDict).map.set(items[i], items[i + 1]);
  };
  const appendItems = (list: PyValue, items: PyValue[]) => {
    if (!Array.isArray(list)) fail(`APPENDS on ${describeValue(list)}, not a list`);
    for (const item of items) (list as PyValue[]).push(item);
  };
  const persistent = (pid: PyValue) => {
    const v = options.persistentLoad(pid);
    push(v);
  };

  for (;;) {
    opStart = pos;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail(`pickle protocol ${bytes[pos - 1]} is newer than 5`);
        break;
      case 0x95: // FRAME: a length hint; the opcodes simply continue
        u64();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1 || marks.length) fail(`STOP with ${stack.length} values on the stack`);
        return { value: stack[0] as PyValue, end: pos };
      case 0x28: // MARK
        if (marks.length >= MAX_NESTING) fail(`more than ${MAX_NESTING} nested MARKs (nesting too deep)`);
        marks.push(stack.length);
        stack.push(MARK);
        break;
      case 0x30: // POP
        if (stack[stack.length - 1] === MARK) popMark();
        else pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        push(top());
        break;
      case 0x4e: // NONE
        push(null);
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      case 0x4a: // BININT
        need(4);
        pos += 4;
        push(view.getInt32(pos - 4, true));
        break;
      case 0x4b: // BININT1
        push(u8());
        break;
      case 0x4d: // BININT2
        push(u16());
        break;
      case 0x49: {
        // INT (text): also True/False as 01/00
        const t = line();
        if (t === "01" || t === "00") push(t === "01");
        else if (/^-?\d+$/.test(t)) push(toNumber(BigInt(t)));
        else fail(`INT ${JSON.stringify(t)} is not an integer`);
        break;
      }
      case 0x8a: // LONG1
        push(toNumber(littleEndianSigned(take(u8()))));
        break;
      case 0x8b: {
        // LONG4
        const n = u32();
        if (n > 1024) fail(`a ${n}-byte integer`);
        push(toNumber(littleEndianSigned(take(n))));
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        pos += 8;
        push(view.getFloat64(pos - 8, false));
        break;
      case 0x58: // BINUNICODE
        push(text(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        push(text(u8()));
        break;
      case 0x8d: // BINUNICODE8
        push(text(u64()));
        break;
      case 0x54: // BINSTRING (Python 2 str)
        push(latin1.decode(take(u32())));
        break;
      case 0x55: // SHORT_BINSTRING
        push(latin1.decode(take(u8())));
        break;
      case 0x42: // BINBYTES
        push(take(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        push(take(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        push(take(u64()).slice());
        break;
      case 0x29: // EMPTY_TUPLE
        push(new PyTuple([]));
        break;
      case 0x85: // TUPLE1
        push(new PyTuple([pop()]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        push(new PyTuple([pop(), b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        push(new PyTuple([pop(), b, c]));
        break;
      }
      case 0x74: // TUPLE
        push(new PyTuple(popMark()));
        break;
      case 0x5d: // EMPTY_LIST
      case 0x8f: // EMPTY_SET (a set of plain values is kept as a list)
        push([]);
        break;
      case 0x6c: // LIST
      case 0x91: // FROZENSET
        push(popMark());
        break;
      case 0x61: {
        // APPEND
        const item = pop();
        appendItems(top(), [item]);
        break;
      }
      case 0x65: // APPENDS
      case 0x90: {
        // ADDITEMS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x7d: // EMPTY_DICT
        push(new PyDict());
        break;
      case 0x64: {
        // DICT
        const dict = new PyDict();
        setItems(dict, popMark());
        push(dict);
        break;
      }
      case 0x73: {
        // SETITEM
        const value = pop();
        const key = pop();
        setItems(top(), [key, value]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x71: // BINPUT
        memoPut(u8());
        break;
      case 0x72: // LONG_BINPUT
        memoPut(u32());
        break;
      case 0x94: // MEMOIZE
        memoPut(memo.size);
        break;
      case 0x70: {
        // PUT (text)
        const t = line();
        if (!/^\d+$/.test(t)) fail(`PUT index ${JSON.stringify(t)}`);
        memoPut(Number(t));
        break;
      }
      case 0x68: // BINGET
        push(memoGet(u8()));
        break;
      case 0x6a: // LONG_BINGET
        push(memoGet(u32()));
        break;
      case 0x67: {
        // GET (text)
        const t = line();
        if (!/^\d+$/.test(t)) fail(`GET index ${JSON.stringify(t)}`);
        push(memoGet(Number(t)));
        break;
      }
      case 0x63: {
        // GLOBAL
        const module = line();
        push(global(module, line()));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") fail("STACK_GLOBAL without two strings");
        push(global(module as string, name as string));
        break;
      }
      case 0x69: {
        // INST: a global instantiated in one opcode
        const module = line();
        const name = line();
        global(module, name);
        fail(`INST of ${module}.${name} is not supported`);
        break;
      }
      case 0x6f: // OBJ
        fail("OBJ (instantiating a class) is not supported");
        break;
      case 0x82: // EXT1
      case 0x83: // EXT2
      case 0x84: // EXT4
        fail("extension-registry globals (EXT1/2/4) are refused");
        break;
      case 0x52: {
        // REDUCE
        const args = pop();
        const callable = pop();
        push(call(callable, args, "REDUCE"));
        break;
      }
      case 0x81: {
        // NEWOBJ
        const args = pop();
        const cls = pop();
        push(call(cls, args, "NEWOBJ"));
        break;
      }
      case 0x92: // NEWOBJ_EX
        fail("NEWOBJ_EX is not supported");
        break;
      case 0x62: {
        // BUILD: state for the object below it. OrderedDict carries `_metadata` (module versions) and
        // parameters may carry Python attributes: neither matters for the weights, and nothing is called.
        pop();
        const obj = top();
        if (!(obj instanceof PyDict || obj instanceof TorchTensor))
          fail(`BUILD on ${describeValue(obj)} is not supported`);
        break;
      }
      case 0x51: // BINPERSID
        persistent(pop());
        break;
      case 0x50: // PERSID (text)
        persistent(line());
        break;
      case 0x97: // NEXT_BUFFER
      case 0x98: // READONLY_BUFFER
        fail("out-of-band buffers are not supported");
        break;
      default:
        fail(`unsupported opcode 0x${op.toString(16).padStart(2, "0")}`);
    }
  }
}

function littleEndianSigned(b: Uint8Array): bigint {
  let v = 0n;
  for (let i = b.byteLength - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
  if (b.byteLength && b[b.byteLength - 1] & 0x80) v -= 1n << BigInt(8 * b.byteLength);
  return v;
}

function toNumber(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

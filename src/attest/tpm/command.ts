/**
 * TPM 2.0 command framing (Part 1 §18, Part 3): `tag u16 ‖ size u32 ‖ commandCode u32 ‖ handles ‖
 * [authorizationSize u32 ‖ sessions] ‖ parameters`, big-endian. The only session we ever need is the empty
 * password session (TPM_RS_PW), exactly what az-cvm-vtpm sets with `AuthSession::Password`.
 */
import { DecoderError } from '../../util/errors.js';
import { TPM_RC_SUCCESS, TPM_RS_PW, TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS } from './constants.js';
import type { TpmTransport } from './transport.js';

/** A TPM response code other than success; `rc` lets callers react to e.g. "index not defined". */
export class TpmResponseError extends DecoderError {
  constructor(
    readonly command: string,
    readonly rc: number,
  ) {
    super(`TPM2_${command} failed with response code 0x${rc.toString(16).padStart(3, '0')}`);
  }
  /** The error number without handle/parameter/session position bits (format-one codes). */
  get baseRc(): number {
    return this.rc & 0x80 ? this.rc & 0xbf : this.rc;
  }
}

/** Big-endian builder for parameter areas. */
export class TpmWriter {
  private readonly parts: Buffer[] = [];
  u8(v: number): this {
    this.parts.push(Buffer.from([v & 0xff]));
    return this;
  }
  u16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v);
    this.parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v >>> 0);
    this.parts.push(b);
    return this;
  }
  bytes(b: Uint8Array): this {
    this.parts.push(Buffer.from(b));
    return this;
  }
  /** TPM2B_*: u16 size ‖ bytes. */
  sized(b: Uint8Array): this {
    if (b.length > 0xffff) throw new DecoderError(`TPM2B value too large (${b.length} bytes)`);
    return this.u16(b.length).bytes(b);
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** Big-endian reader with bounds checks: a short or malformed response is an error, never a misread. */
export class TpmReader {
  private pos = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {}
  get offset(): number {
    return this.pos;
  }
  get remaining(): number {
    return this.buf.length - this.pos;
  }
  private need(n: number): void {
    if (this.pos + n > this.buf.length) {
      throw new DecoderError(`malformed ${this.what}: truncated at byte ${this.pos} (need ${n} more)`);
    }
  }
  u8(): number {
    this.need(1);
    return this.buf.readUInt8(this.pos++);
  }
  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }
  bytes(n: number): Buffer {
    this.need(n);
    const v = Buffer.from(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return v;
  }
  sized(): Buffer {
    return this.bytes(this.u16());
  }
}

export interface TpmCommand {
  name: string;
  code: number;
  handles: number[];
  /** Number of handles that take the (single, empty-password) authorisation session; 0 = no sessions. */
  passwordSession: boolean;
  parameters: Buffer;
}

export function marshalCommand(cmd: TpmCommand): Buffer {
  const w = new TpmWriter();
  for (const h of cmd.handles) w.u32(h);
  if (cmd.passwordSession) {
    // TPMS_AUTH_COMMAND: sessionHandle, nonce (empty), sessionAttributes (0), hmac (empty password).
    w.u32(9).u32(TPM_RS_PW).u16(0).u8(0).u16(0);
  }
  const body = w.bytes(cmd.parameters).done();
  const head = Buffer.alloc(10);
  head.writeUInt16BE(cmd.passwordSession ? TPM_ST_SESSIONS : TPM_ST_NO_SESSIONS, 0);
  head.writeUInt32BE(10 + body.length, 2);
  head.writeUInt32BE(cmd.code, 6);
  return Buffer.concat([head, body]);
}

/**
 * Sends `cmd`, checks the header, and returns a reader positioned at the response parameters (after
 * `handleCount` response handles and, for session commands, the parameterSize field).
 */
export async function runCommand(transport: TpmTransport, cmd: TpmCommand, handleCount = 0): Promise<TpmReader> {
  const wire = marshalCommand(cmd);
  for (let attempt = 1; ; attempt++) {
    const rsp = await transport(wire);
    const r = new TpmReader(rsp, `TPM2_${cmd.name} response`);
    const tag = r.u16();
    const size = r.u32();
    const rc = r.u32();
    if (size !== rsp.length) {
      throw new DecoderError(`malformed TPM2_${cmd.name} response: header says ${size} bytes, got ${rsp.length}`);
    }
    // TPM_RC_RETRY / YIELDED / TESTING: the TPM asks to resend (the kernel and tpm2-tss do the same, bounded).
    if (TRANSIENT_RCS.has(rc) && attempt < MAX_ATTEMPTS) {
      await new Promise((resolve) => setTimeout(resolve, 20 * attempt));
      continue;
    }
    return checkResponse(cmd, r, tag, rc, handleCount);
  }
}

const TRANSIENT_RCS = new Set([0x922, 0x908, 0x90a]);
const MAX_ATTEMPTS = 10;

function checkResponse(cmd: TpmCommand, r: TpmReader, tag: number, rc: number, handleCount: number): TpmReader {
  if (rc !== TPM_RC_SUCCESS) throw new TpmResponseError(cmd.name, rc);
  if (tag !== (cmd.passwordSession ? TPM_ST_SESSIONS : TPM_ST_NO_SESSIONS)) {
    throw new DecoderError(`malformed TPM2_${cmd.name} response: unexpected tag 0x${tag.toString(16)}`);
  }
  for (let i = 0; i < handleCount; i++) r.u32();
  if (cmd.passwordSession) {
    const parameterSize = r.u32();
    if (parameterSize > r.remaining) throw new DecoderError(`malformed TPM2_${cmd.name} response: parameterSize too large`);
  }
  return r;
}

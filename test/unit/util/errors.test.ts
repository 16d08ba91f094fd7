/** One error type, one code spelling: what the codes are, that they travel with the error, and what they do not change. */
import { describe, expect, it } from 'vitest';
import { classifyDeviceError, TeeDeviceError } from '../../../src/attest/native-errors.js';
import { TsmError } from '../../../src/attest/configfs-tsm.js';
import { KbsError, errorCodes } from '../../../src/kbs/errors.js';
import { KBS_ERROR_CODES, TEE_ERROR_CODES } from '../../../src/util/error-codes.js';
import { DecoderError, describeError } from '../../../src/util/errors.js';

describe('error codes', () => {
  it('are one list in one spelling (UPPER_SNAKE), with no duplicates', () => {
    const all = [...KBS_ERROR_CODES, ...TEE_ERROR_CODES];
    expect(new Set(all).size).toBe(all.length);
    for (const c of all) expect(c).toMatch(/^[A-Z]+(?:_[A-Z0-9]+)+$/);
  });

  it('travel on the one error type, whatever the layer: KBS, ioctl and configfs-tsm failures are DecoderErrors with a code', () => {
    const kbs = new KbsError('KBS_POLICY_DENIED', 'denied');
    const tsm = new TsmError('busy', 'TEE_BUSY');
    const raw = Object.assign(new Error('ioctl failed'), { op: 'SNP_GET_REPORT', path: '/dev/sev-guest', errno: 16, syscall: 'ioctl' });
    const dev = classifyDeviceError(raw) as TeeDeviceError;
    for (const e of [kbs, tsm, dev]) expect(e).toBeInstanceOf(DecoderError);
    expect([kbs.code, tsm.code, dev.code]).toEqual(['KBS_POLICY_DENIED', 'TEE_BUSY', 'TEE_BUSY']);
    expect(dev).toBeInstanceOf(TeeDeviceError);
  });

  it('change neither the one-line message nor the transport codes the retry logic reads', () => {
    const socket = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
    const err = new KbsError('KBS_UNREACHABLE', 'cannot reach the KBS', { cause: socket });
    expect(describeError(err)).toBe('cannot reach the KBS');
    expect(errorCodes(err)).toEqual(['ECONNREFUSED']);
    expect(err.cause).toBe(socket);
  });
});

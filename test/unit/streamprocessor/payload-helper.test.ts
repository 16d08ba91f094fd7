/**
 * The test helper that encodes containerd's fd-3 payload (test/helpers/payload.ts) must produce exactly the bytes
 * Go writes, or every test built on it would test the decoder against the wrong input.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodePayload, payloadJson } from '../../helpers/payload.js';
import { decodePayload } from '../../../src/streamprocessor/payload.js';

const FIXTURES = join(import.meta.dirname, '../../fixtures/ocicrypt-v1.3.1');

interface FixtureJson {
  DecryptConfig: { Parameters: Record<string, Array<string | null>> | null };
  Descriptor: { mediaType: string; digest: string; size: number; annotations?: Record<string, string> };
}

function fixture(name: string): { bin: Buffer; json: FixtureJson } {
  return {
    bin: readFileSync(join(FIXTURES, `${name}.bin`)),
    json: JSON.parse(readFileSync(join(FIXTURES, `${name}.json`), 'utf8')) as FixtureJson,
  };
}

describe('encodePayload (test helper)', () => {
  it('reproduces a CRI pull payload (Parameters null) byte for byte', () => {
    const { bin, json } = fixture('payload-cri');
    expect(encodePayload(json.Descriptor).equals(bin)).toBe(true);
  });

  it('reproduces a ctr --key payload (private keys as base64 []byte) byte for byte', () => {
    const { bin, json } = fixture('payload-ctr-enc');
    const params: Record<string, Array<Buffer | null>> = {};
    for (const [k, list] of Object.entries(json.DecryptConfig.Parameters ?? {})) {
      params[k] = list.map((v) => (v === null ? null : Buffer.from(v, 'base64')));
    }
    expect(encodePayload(json.Descriptor, params).equals(bin)).toBe(true);
  });

  it('sorts annotation keys as Go marshals maps, and the decoder reads it back', () => {
    const descriptor = { mediaType: 'application/vnd.oci.image.layer.v1.tar+encrypted', digest: 'sha256:' + 'a'.repeat(64), size: 3, annotations: { z: '1', a: '2' } };
    expect(payloadJson(descriptor)).toContain('"annotations":{"a":"2","z":"1"}');
    const decoded = decodePayload(encodePayload(descriptor, { privkeys: [Buffer.from('k')] }));
    expect(decoded.descriptor).toEqual({ ...descriptor, annotations: { a: '2', z: '1' } });
    expect(decoded.params['privkeys']?.[0]?.toString()).toBe('k');
  });
});

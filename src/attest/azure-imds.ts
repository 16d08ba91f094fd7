/**
 * Azure Instance Metadata Service calls the Azure CVM attesters need: the VCEK for az-snp-vtpm
 * (az-snp-vtpm `src/imds.rs`) and a TD quote for az-tdx-vtpm (az-tdx-vtpm `src/imds.rs`). IMDS is link-local
 * plain HTTP by design; Node's fetch ignores proxy variables, which is what we want for 169.254.169.254.
 */
import { DecoderError, describeError } from '../util/errors.js';

export interface AzureImds {
  /** The VCEK certificate, DER. */
  vcekDer(): Promise<Buffer>;
  /** A TD quote for `tdReport` from the host's quoting enclave. */
  tdQuote(tdReport: Buffer): Promise<Buffer>;
}

export const AZURE_IMDS_URL = 'http://169.254.169.254';
/** Largest IMDS answer read: a VCEK PEM or a TD quote with its certification data is a few KiB. */
export const MAX_IMDS_RESPONSE_BYTES = 256 * 1024;

export function httpAzureImds(baseUrl = AZURE_IMDS_URL, timeoutMs = 10_000): AzureImds {
  async function call(path: string, init: RequestInit): Promise<unknown> {
    const url = `${baseUrl}${path}`;
    let res: Response;
    const signal = AbortSignal.timeout(timeoutMs);
    try {
      // No redirects: IMDS never sends one, and following it would take evidence material to another host.
      res = await fetch(url, { ...init, redirect: 'error', signal });
    } catch (err) {
      throw new DecoderError(`Azure IMDS ${path} unreachable within ${timeoutMs} ms: ${describeError(err)}`, { cause: err });
    }
    if (res.status >= 300 && res.status < 400) throw new DecoderError(`Azure IMDS ${path} answered a redirect (HTTP ${res.status}); refused`);
    const text = await boundedText(res, path);
    if (!res.ok) throw new DecoderError(`Azure IMDS ${path} answered HTTP ${res.status}`);
    try {
      return JSON.parse(text);
    } catch {
      throw new DecoderError(`Azure IMDS ${path} answered non-JSON`);
    }
  }
  return {
    async vcekDer() {
      const body = await call('/metadata/THIM/amd/certification', { headers: { Metadata: 'true' } });
      const pem = (body as { vcekCert?: unknown } | null)?.vcekCert;
      if (typeof pem !== 'string') throw new DecoderError('Azure IMDS certification response has no "vcekCert"');
      return pemCertificateToDer(pem);
    },
    async tdQuote(tdReport) {
      const body = await call('/acc/tdquote', {
        method: 'POST',
        headers: { Metadata: 'true', 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ report: tdReport.toString('base64url') }),
      });
      const quote = (body as { quote?: unknown } | null)?.quote;
      if (typeof quote !== 'string' || !/^[A-Za-z0-9+/_-]+={0,2}$/.test(quote)) {
        throw new DecoderError('Azure IMDS tdquote response has no base64 "quote"');
      }
      // az-tdx-vtpm decodes URL-safe base64; azsdk also accepts standard. Node's decoder takes both alphabets.
      return Buffer.from(quote.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
    },
  };
}

/** The body as text, refusing (and cancelling) one larger than MAX_IMDS_RESPONSE_BYTES. */
async function boundedText(res: Response, path: string): Promise<string> {
  const declared = Number(res.headers.get('content-length') ?? '0');
  const tooBig = (): DecoderError => new DecoderError(`Azure IMDS ${path} answered more than ${MAX_IMDS_RESPONSE_BYTES} bytes; refused`);
  if (declared > MAX_IMDS_RESPONSE_BYTES) {
    await res.body?.cancel().catch(() => undefined);
    throw tooBig();
  }
  if (!res.body) return '';
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = res.body.getReader();
  for (;;) {
    let r: Awaited<ReturnType<typeof reader.read>>;
    try {
      r = await reader.read();
    } catch (err) {
      throw new DecoderError(`Azure IMDS ${path}: reading the answer failed: ${describeError(err)}`, { cause: err });
    }
    if (r.done) break;
    total += r.value.length;
    if (total > MAX_IMDS_RESPONSE_BYTES) {
      await reader.cancel().catch(() => undefined);
      throw tooBig();
    }
    chunks.push(r.value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** The single CERTIFICATE block of a PEM string, as DER (GC `pem_to_der`). */
export function pemCertificateToDer(pem: string): Buffer {
  const m = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/.exec(pem);
  if (!m) throw new DecoderError('VCEK from Azure IMDS is not PEM');
  if (m[1] !== 'CERTIFICATE') throw new DecoderError(`VCEK PEM label is ${m[1]}, expected CERTIFICATE`);
  const b64 = m[2]!.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) throw new DecoderError('VCEK PEM body is not base64');
  return Buffer.from(b64, 'base64');
}

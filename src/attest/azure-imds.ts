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

export function httpAzureImds(baseUrl = AZURE_IMDS_URL, timeoutMs = 10_000): AzureImds {
  async function call(path: string, init: RequestInit): Promise<unknown> {
    const url = `${baseUrl}${path}`;
    let res: Response;
    try {
      res = await fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
    } catch (err) {
      throw new DecoderError(`Azure IMDS ${path} unreachable within ${timeoutMs} ms: ${describeError(err)}`);
    }
    const text = await res.text();
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

/** The single CERTIFICATE block of a PEM string, as DER (GC `pem_to_der`). */
export function pemCertificateToDer(pem: string): Buffer {
  const m = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/.exec(pem);
  if (!m) throw new DecoderError('VCEK from Azure IMDS is not PEM');
  if (m[1] !== 'CERTIFICATE') throw new DecoderError(`VCEK PEM label is ${m[1]}, expected CERTIFICATE`);
  const b64 = m[2]!.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) throw new DecoderError('VCEK PEM body is not base64');
  return Buffer.from(b64, 'base64');
}

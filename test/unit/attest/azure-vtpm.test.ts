/**
 * The Azure CVM vTPM attesters against a real TPM 2.0 simulator (swtpm). tpm2-tools provision what Azure's
 * paravisor provides (the AK at 0x81000003, the HCL report at NV 0x01400001) and check our results
 * independently; a "paravisor" hook rewrites the HCL report's user-data when NV 0x01400002 is written, as
 * Azure does. swtpm's plain data channel (`--server type=unixio`) takes raw TPM commands, so our transport is a
 * unix-socket connection per command; tpm2-tools reach the same socket through the `cmd:` TCTI and a bridge.
 */
import { execFile, execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { X509Certificate, createHash, createPublicKey, verify as cryptoVerify } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultConfig } from '../../../src/config/types.js';
import { createAzureVtpmAttester, type AzSnpVtpmEvidence, type AzTdxVtpmEvidence, type TpmTransport } from '../../../src/attest/azure-vtpm.js';
import { httpAzureImds, pemCertificateToDer, type AzureImds } from '../../../src/attest/azure-imds.js';
import { deviceTpmTransport } from '../../../src/attest/tpm/transport.js';
import { parseQuoteAttest } from '../../../src/attest/tpm/attest.js';

/** POSIX single-quoting for one shell word. */
const shellQuote = (s: string): string => `'${s.replaceAll("'", `'\\''`)}'`;

const FIX = path.join(import.meta.dirname, '../../fixtures/tee');
const TOOLS = ['swtpm', 'tpm2_createprimary', 'tpm2_evictcontrol', 'tpm2_readpublic', 'tpm2_nvdefine', 'tpm2_nvundefine', 'tpm2_nvwrite', 'tpm2_nvread', 'tpm2_nvreadpublic', 'tpm2_pcrextend', 'tpm2_pcrread'];
const missing = TOOLS.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
if (missing.length > 0 && process.env.CI === 'true') {
  throw new Error(`azure-vtpm tests need swtpm and tpm2-tools (apt-get install -y swtpm swtpm-tools tpm2-tools); missing: ${missing.join(', ')}`);
}
const SKIP = missing.length > 0 ? `swtpm/tpm2-tools not installed (missing ${missing.join(', ')})` : '';
if (SKIP) console.warn(`azure-vtpm.test.ts: SKIPPED: ${SKIP}`);

/** Relays cmd-TCTI stdin/stdout to the swtpm socket, one complete command/response at a time. */
const BRIDGE = `
import net from 'node:net';
const sock = net.createConnection(process.argv[2]);
let inBuf = Buffer.alloc(0), outBuf = Buffer.alloc(0), busy = false;
const pump = () => {
  if (busy || inBuf.length < 10 || inBuf.length < inBuf.readUInt32BE(2)) return;
  const n = inBuf.readUInt32BE(2); busy = true; sock.write(inBuf.subarray(0, n)); inBuf = inBuf.subarray(n);
};
process.stdin.on('data', (d) => { inBuf = Buffer.concat([inBuf, d]); pump(); });
process.stdin.on('end', () => sock.end());
sock.on('data', (d) => {
  outBuf = Buffer.concat([outBuf, d]);
  while (outBuf.length >= 10 && outBuf.length >= outBuf.readUInt32BE(2)) {
    const n = outBuf.readUInt32BE(2); process.stdout.write(outBuf.subarray(0, n)); outBuf = outBuf.subarray(n); busy = false; pump();
  }
});
`;

/**
 * The test holds the only connection to swtpm (it serves one at a time) and serialises every command through it:
 * ours directly, tpm2-tools' through a unix-socket proxy that their `cmd:` TCTI bridge connects to.
 */
class SwtpmLink {
  private queue: Promise<unknown> = Promise.resolve();
  private pending: ((b: Buffer) => void) | undefined;
  private buf = Buffer.alloc(0);
  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      if (this.buf.length >= 10 && this.buf.length >= this.buf.readUInt32BE(2)) {
        const n = this.buf.readUInt32BE(2);
        const rsp = this.buf.subarray(0, n);
        this.buf = this.buf.subarray(n);
        this.pending?.(Buffer.from(rsp));
      }
    });
  }
  static connect(p: string): Promise<SwtpmLink> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(p, () => resolve(new SwtpmLink(s)));
      s.on('error', reject);
    });
  }
  send: TpmTransport = (cmd) => {
    const run = this.queue.then(
      () =>
        new Promise<Buffer>((resolve, reject) => {
          const t = setTimeout(() => reject(new Error('swtpm did not answer')), 10_000);
          this.pending = (b) => {
            clearTimeout(t);
            resolve(b);
          };
          this.sock.write(cmd);
        }),
    );
    this.queue = run.catch(() => undefined);
    return run;
  };
  close(): void {
    this.sock.destroy();
  }
}

function proxyServer(p: string, send: TpmTransport): Promise<net.Server> {
  const server = net.createServer((c) => {
    let buf = Buffer.alloc(0);
    c.on('data', async (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 10 && buf.length >= buf.readUInt32BE(2)) {
        const n = buf.readUInt32BE(2);
        const cmd = buf.subarray(0, n);
        buf = buf.subarray(n);
        c.write(await send(Buffer.from(cmd)));
      }
    });
    c.on('error', () => undefined);
  });
  return new Promise((resolve) => server.listen(p, () => resolve(server)));
}

/** An HCL report in Azure's layout: trustee's header and hardware report, our variable data (fits swtpm's 2 KiB NV limit). */
function hclReport(base: Buffer, akJwk: { n: string; e: string }, userData: Buffer): Buffer {
  const varData = Buffer.from(
    JSON.stringify({
      keys: [{ kid: 'HCLAkPub', key_ops: ['sign'], kty: 'RSA', e: akJwk.e, n: akJwk.n }],
      'vm-configuration': { 'secure-boot': true, 'tpm-enabled': true },
      'user-data': Buffer.concat([userData, Buffer.alloc(64 - userData.length)]).toString('hex').toUpperCase(),
    }),
  );
  const head = Buffer.from(base.subarray(0, 0x4d4));
  head.writeUInt32LE(0x14 + varData.length, 0x4c0);
  head.writeUInt32LE(varData.length, 0x4d0);
  return Buffer.concat([head, varData]);
}

describe.skipIf(SKIP !== '')('Azure vTPM attesters on swtpm', () => {
  let dir = '';
  let swtpm: ChildProcess | undefined;
  let sock = '';
  let proxySock = '';
  let link: SwtpmLink;
  let proxy: net.Server;
  let akJwk: { n: string; e: string; kty: string };
  let akPem = '';
  let hclBase = Buffer.alloc(0);
  const tools = (args: string[]): Promise<Buffer> =>
    new Promise((resolve, reject) => {
      execFile(
        args[0]!,
        args.slice(1),
        // The cmd TCTI hands its string to `sh -c`: quote each word (the checkout may live in a path with spaces).
        { env: { ...process.env, TPM2TOOLS_TCTI: `cmd:${[process.execPath, path.join(dir, 'bridge.mjs'), proxySock].map(shellQuote).join(' ')}` }, encoding: 'buffer', timeout: 20_000 },
        (err, stdout, stderr) => (err ? reject(new Error(`${args.join(' ')}: ${stderr.toString()}`)) : resolve(stdout)),
      );
    });
  /** (Re)defines NV 0x01400001 holding `report`, as the paravisor would have. */
  const provisionHcl = async (report: Buffer) => {
    try {
      await tools(['tpm2_nvundefine', '-C', 'o', '0x01400001']);
    } catch {
      /* not defined yet */
    }
    await tools(['tpm2_nvdefine', '0x01400001', '-C', 'o', '-s', String(report.length), '-a', 'ownerread|ownerwrite']);
    writeFileSync(path.join(dir, 'hcl.bin'), report);
    await tools(['tpm2_nvwrite', '0x01400001', '-C', 'o', '-i', path.join(dir, 'hcl.bin')]);
  };
  /** Our transport plus the paravisor: after a successful NV_Write to 0x01400002, refresh the HCL report's user-data. */
  const withParavisor = (refresh: boolean): TpmTransport => {
    const inner = link.send;
    return async (cmd) => {
      const rsp = await inner(cmd);
      if (refresh && cmd.readUInt32BE(6) === 0x137 && cmd.readUInt32BE(14) === 0x01400002 && rsp.readUInt32BE(6) === 0) {
        const data = cmd.subarray(33, 33 + cmd.readUInt16BE(31));
        await provisionHcl(hclReport(hclBase, akJwk, data));
      }
      return rsp;
    };
  };
  const fakeImds = (calls: Buffer[] = []): AzureImds => ({
    vcekDer: async () => pemCertificateToDer(readFileSync(path.join(FIX, 'trustee-az-snp-vtpm-vcek.pem'), 'utf8')),
    tdQuote: async (tdReport) => {
      calls.push(tdReport);
      return readFileSync(path.join(FIX, 'trustee-az-tdx-vtpm-td-quote.bin'));
    },
  });
  const reportData = createHash('sha384').update('nonce and tee-pubkey').digest();

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'azure-vtpm-'));
    sock = path.join(dir, 'tpm.sock');
    proxySock = path.join(dir, 'proxy.sock');
    writeFileSync(path.join(dir, 'bridge.mjs'), BRIDGE);
    swtpm = spawn(
      'swtpm',
      ['socket', '--tpm2', '--tpmstate', `dir=${dir}`, '--server', `type=unixio,path=${sock}`, '--ctrl', `type=unixio,path=${path.join(dir, 'ctrl.sock')}`, '--flags', 'not-need-init,startup-clear'],
      { stdio: 'ignore' },
    );
    for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    link = await SwtpmLink.connect(sock);
    proxy = await proxyServer(proxySock, link.send);
    // The AK as Azure provisions it: restricted RSA-2048 RSASSA-SHA256 signing key, persisted at 0x81000003.
    await tools(['tpm2_createprimary', '-C', 'o', '-G', 'rsa2048:rsassa-sha256:null', '-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign', '-c', path.join(dir, 'ak.ctx')]);
    await tools(['tpm2_evictcontrol', '-C', 'o', '-c', path.join(dir, 'ak.ctx'), '0x81000003']);
    await tools(['tpm2_readpublic', '-c', '0x81000003', '-f', 'pem', '-o', path.join(dir, 'ak.pem')]);
    akPem = readFileSync(path.join(dir, 'ak.pem'), 'utf8');
    akJwk = createPublicKey(akPem).export({ format: 'jwk' }) as { n: string; e: string; kty: string };
  }, 60_000);

  afterAll(async () => {
    await new Promise((r) => proxy?.close(r));
    link?.close();
    swtpm?.kill('SIGTERM');
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Trustee's az verifier steps 1, 2, 3 and 5 (the ones not needing AMD/Intel keys), on the evidence alone. */
  function checkLikeTrustee(ev: AzSnpVtpmEvidence | AzTdxVtpmEvidence, rd: Buffer) {
    const hcl = Buffer.from(ev.hcl_report, 'base64url');
    const varData = JSON.parse(hcl.subarray(0x4d4, 0x4d4 + hcl.readUInt32LE(0x4d0)).toString()) as { keys: { kid: string }[]; 'user-data': string };
    const ak = createPublicKey({ key: varData.keys.find((k) => k.kid === 'HCLAkPub') as never, format: 'jwk' });
    const message = Buffer.from(ev.tpm_quote.message, 'hex');
    expect(cryptoVerify('sha256', message, ak, Buffer.from(ev.tpm_quote.signature, 'hex'))).toBe(true);
    expect(cryptoVerify('sha256', message, createPublicKey(akPem), Buffer.from(ev.tpm_quote.signature, 'hex'))).toBe(true);
    const attest = parseQuoteAttest(message);
    expect(attest.extraData.toString('hex')).toBe(rd.toString('hex'));
    const pcrs = ev.tpm_quote.pcrs.map((p) => Buffer.from(p, 'hex'));
    expect(createHash('sha256').update(Buffer.concat(pcrs)).digest().equals(attest.pcrDigest)).toBe(true);
    expect(Buffer.from(varData['user-data'], 'hex').subarray(0, rd.length).equals(rd)).toBe(true);
  }

  it('az-snp-vtpm: evidence v2 in the shape of trustee\'s evidence-v2.json, bound to the unpadded report data', async () => {
    hclBase = readFileSync(path.join(FIX, 'trustee-az-snp-vtpm-hcl-report.bin'));
    await provisionHcl(hclReport(hclBase, akJwk, Buffer.alloc(0)));
    const attester = createAzureVtpmAttester('az-snp-vtpm', defaultConfig().attestation, { transport: withParavisor(true), imds: fakeImds(), hclRefreshDelayMs: 0 });
    expect(attester.hardware).toBe(true);
    const ev = (await attester.getEvidence(reportData)) as AzSnpVtpmEvidence;

    const trustee = JSON.parse(readFileSync(path.join(FIX, 'trustee-az-snp-vtpm-evidence-v2.json'), 'utf8')) as AzSnpVtpmEvidence;
    expect(Object.keys(ev)).toEqual(Object.keys(trustee));
    expect(Object.keys(ev.tpm_quote)).toEqual(Object.keys(trustee.tpm_quote));
    expect(ev.version).toBe(2);
    expect(ev.tpm_quote.pcrs).toHaveLength(24);
    for (const s of [ev.hcl_report, ev.vcek]) expect(s).toMatch(/^[A-Za-z0-9_-]*={0,2}$/);
    expect(ev.hcl_report.length % 4).toBe(0); // padded, like serde_with Base64<UrlSafe>
    expect(ev.vcek.length % 4).toBe(0);
    expect(Buffer.from(ev.vcek, 'base64url').equals(pemCertificateToDer(readFileSync(path.join(FIX, 'trustee-az-snp-vtpm-vcek.pem'), 'utf8')))).toBe(true);
    checkLikeTrustee(ev, reportData);

    // The report data really went to NV 0x01400002 (read back by tpm2-tools), 48 bytes, unpadded.
    expect((await tools(['tpm2_nvread', '-C', 'o', '0x01400002'])).equals(reportData)).toBe(true);
    // The HCL report sent is what the vTPM holds now.
    expect((await tools(['tpm2_nvread', '-C', 'o', '0x01400001'])).equals(Buffer.from(ev.hcl_report, 'base64url'))).toBe(true);
  }, 60_000);

  it('labels the evidence version 1 for trustee v0.18-v0.20 when attestation.azure_evidence_version = 1', async () => {
    const attester = createAzureVtpmAttester('az-snp-vtpm', { ...defaultConfig().attestation, azureEvidenceVersion: 1 }, { transport: withParavisor(true), imds: fakeImds(), hclRefreshDelayMs: 0 });
    const ev = (await attester.getEvidence(reportData)) as AzSnpVtpmEvidence;
    expect(ev.version).toBe(1);
    expect(Object.keys(ev)).toEqual(['version', 'tpm_quote', 'hcl_report', 'vcek']);
  }, 60_000);

  it('quotes SHA-256 PCRs 0-23 as they are (PCR 8 after an extend equals tpm2_pcrread)', async () => {
    await tools(['tpm2_pcrextend', `8:sha256=${'ab'.repeat(32)}`]);
    const attester = createAzureVtpmAttester('az-snp-vtpm', defaultConfig().attestation, { transport: withParavisor(true), imds: fakeImds(), hclRefreshDelayMs: 0 });
    const ev = (await attester.getEvidence(reportData)) as AzSnpVtpmEvidence;
    await tools(['tpm2_pcrread', 'sha256:8', '-o', path.join(dir, 'pcr8.bin')]);
    const pcr8 = readFileSync(path.join(dir, 'pcr8.bin'));
    expect(ev.tpm_quote.pcrs[8]).toBe(pcr8.toString('hex'));
    expect(ev.tpm_quote.pcrs[8]).not.toBe('00'.repeat(32));
    checkLikeTrustee(ev, reportData);
  }, 60_000);

  it('redefines NV 0x01400002 when the report data size changes (32-byte report data)', async () => {
    const rd32 = createHash('sha256').update('x').digest();
    const attester = createAzureVtpmAttester('az-snp-vtpm', defaultConfig().attestation, { transport: withParavisor(true), imds: fakeImds(), hclRefreshDelayMs: 0 });
    const ev = (await attester.getEvidence(rd32)) as AzSnpVtpmEvidence;
    checkLikeTrustee(ev, rd32);
    expect((await tools(['tpm2_nvreadpublic', '0x01400002'])).toString()).toMatch(/size: 32/);
    expect((await tools(['tpm2_nvread', '-C', 'o', '0x01400002'])).equals(rd32)).toBe(true);
  }, 60_000);

  it('az-tdx-vtpm: sends the HCL report\'s TDREPORT to IMDS and carries the TD quote', async () => {
    hclBase = readFileSync(path.join(FIX, 'trustee-az-tdx-vtpm-hcl-report.bin'));
    await provisionHcl(hclReport(hclBase, akJwk, Buffer.alloc(0)));
    const calls: Buffer[] = [];
    const attester = createAzureVtpmAttester('az-tdx-vtpm', defaultConfig().attestation, { transport: withParavisor(true), imds: fakeImds(calls), hclRefreshDelayMs: 0 });
    const ev = (await attester.getEvidence(reportData)) as AzTdxVtpmEvidence;
    const trustee = JSON.parse(readFileSync(path.join(FIX, 'trustee-az-tdx-vtpm-evidence-v1.json'), 'utf8')) as AzTdxVtpmEvidence;
    expect(Object.keys(ev)).toEqual(Object.keys(trustee));
    expect(ev.version).toBe(2);
    expect(calls).toHaveLength(1);
    expect(calls[0]!.equals(hclBase.subarray(0x20, 0x20 + 1024))).toBe(true);
    expect(Buffer.from(ev.td_quote, 'base64url').equals(readFileSync(path.join(FIX, 'trustee-az-tdx-vtpm-td-quote.bin')))).toBe(true);
    checkLikeTrustee(ev, reportData);
  }, 60_000);

  it('refuses a stale HCL report whose user-data does not carry the report data (hex in the error)', async () => {
    const other = createHash('sha384').update('another nonce').digest();
    const attester = createAzureVtpmAttester('az-tdx-vtpm', defaultConfig().attestation, { transport: withParavisor(false), imds: fakeImds(), hclRefreshDelayMs: 0 });
    await expect(attester.getEvidence(other)).rejects.toThrow(new RegExp(`user-data [0-9a-f]+ does not carry the report data ${other.toString('hex')}`));
  }, 60_000);

  it('refuses a TEE type that does not match the HCL report, and oversized report data', async () => {
    const snp = createAzureVtpmAttester('az-snp-vtpm', defaultConfig().attestation, { transport: withParavisor(true), imds: fakeImds(), hclRefreshDelayMs: 0 });
    await expect(snp.getEvidence(reportData)).rejects.toThrow(/HCL report is of type 4, expected 2/);
    await expect(snp.getEvidence(Buffer.alloc(65, 1))).rejects.toThrow(/report data must be 1\.\.64 bytes, got 65/);
  }, 60_000);
});

describe('Azure IMDS client', () => {
  let server: Server;
  let base = '';
  const seen: { method?: string; url?: string; metadata?: string | string[]; body: string }[] = [];
  beforeAll(async () => {
    server = createServer((req: IncomingMessage, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        seen.push({ method: req.method, url: req.url, metadata: req.headers.metadata, body });
        res.setHeader('content-type', 'application/json');
        if (req.url?.startsWith('/redirect/')) {
          res.statusCode = 302;
          res.setHeader('location', `${base}${req.url.slice('/redirect'.length)}`);
          res.end();
        } else if (req.url?.startsWith('/big/')) {
          // 1 MiB of JSON-ish bytes, chunked (no content-length): the reader must stop at its cap.
          for (let i = 0; i < 16; i++) res.write(Buffer.alloc(64 * 1024, 0x20));
          res.end('{}');
        } else if (req.url === '/metadata/THIM/amd/certification') {
          res.end(JSON.stringify({ vcekCert: readFileSync(path.join(FIX, 'trustee-az-snp-vtpm-vcek.pem'), 'utf8'), certificateChain: '' }));
        } else if (req.url === '/acc/tdquote') {
          res.end(JSON.stringify({ quote: readFileSync(path.join(FIX, 'trustee-az-tdx-vtpm-td-quote.bin')).toString('base64url') }));
        } else {
          res.statusCode = 404;
          res.end('{}');
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it('gets the VCEK as DER and a TD quote for a TDREPORT (base64url body), with Metadata: true', async () => {
    const imds = httpAzureImds(base, 5000);
    const der = await imds.vcekDer();
    expect(new X509Certificate(der).subject).toMatch(/SEV-VCEK/);
    expect(der.equals(pemCertificateToDer(readFileSync(path.join(FIX, 'trustee-az-snp-vtpm-vcek.pem'), 'utf8')))).toBe(true);
    const tdReport = readFileSync(path.join(FIX, 'trustee-az-tdx-vtpm-hcl-report.bin')).subarray(0x20, 0x420);
    const quote = await imds.tdQuote(tdReport);
    expect(quote.equals(readFileSync(path.join(FIX, 'trustee-az-tdx-vtpm-td-quote.bin')))).toBe(true);
    expect(seen.map((s) => [s.method, s.url, s.metadata])).toEqual([
      ['GET', '/metadata/THIM/amd/certification', 'true'],
      ['POST', '/acc/tdquote', 'true'],
    ]);
    expect(JSON.parse(seen[1]!.body)).toEqual({ report: tdReport.toString('base64url') });
  });

  it('follows no redirect and reads at most 256 KiB of an answer', async () => {
    await expect(httpAzureImds(`${base}/redirect`, 2000).vcekDer()).rejects.toThrow(/Azure IMDS \/metadata\/THIM\/amd\/certification (unreachable|answered a redirect)/);
    expect(seen.filter((x) => x.url === '/metadata/THIM/amd/certification')).toHaveLength(1); // only the first test's
    await expect(httpAzureImds(`${base}/big`, 2000).vcekDer()).rejects.toThrow(/answered more than 262144 bytes; refused/);
  });

  it('fails with one clear line when IMDS is unreachable or answers an error', async () => {
    await expect(httpAzureImds(base.replace(/:\d+$/, ':1'), 2000).vcekDer()).rejects.toThrow(/Azure IMDS \/metadata\/THIM\/amd\/certification unreachable/);
    await expect(httpAzureImds(`${base}/nope`, 2000).vcekDer()).rejects.toThrow(/answered HTTP 404/);
  });
});

describe('the /dev/tpmrm0 transport', () => {
  it('its deadline fires although the pending read cannot be cancelled (a device that never answers)', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tpm-hang-'));
    try {
      // A FIFO opened read-write never reaches EOF: after a 0-byte command the read blocks for good, as a wedged TPM.
      const fifo = path.join(dir, 'tpmrm0');
      execFileSync('mkfifo', [fifo]);
      const t0 = Date.now();
      await expect(deviceTpmTransport(fifo, 300)(Buffer.alloc(0))).rejects.toThrow(/did not answer within 300 ms/);
      expect(Date.now() - t0).toBeLessThan(3000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the layer deadline', () => {
  it('an attester whose TPM never answers gives up as soon as the layer signal aborts', async () => {
    const hung: TpmTransport = () => new Promise(() => undefined);
    const attester = createAzureVtpmAttester('az-snp-vtpm', defaultConfig().attestation, { transport: hung, imds: { vcekDer: async () => Buffer.alloc(0), tdQuote: async () => Buffer.alloc(0) }, hclRefreshDelayMs: 0 });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const t0 = Date.now();
    await expect(attester.getEvidence(Buffer.alloc(32, 1), ac.signal)).rejects.toThrow(/vTPM evidence abandoned: the layer deadline passed/);
    expect(Date.now() - t0).toBeLessThan(2000);
  });
});

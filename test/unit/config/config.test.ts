/**
 * Config loading: path precedence (--config > COCO_DECODER_CONFIG > /etc/coco-decoder/config.toml), every key
 * mapped to its typed field, and strictness — unknown tables/keys and bad values fail with the file and the
 * dotted key in one line.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../../src/config/load.js';
import { DEFAULT_CONFIG_PATH, defaultConfig } from '../../../src/config/types.js';
import { DecoderError, describeError } from '../../../src/util/errors.js';
import { makeTempDir, removeDir } from '../../helpers/kbs-helpers.js';

let dir: string;
beforeAll(() => {
  dir = makeTempDir('coco-config-');
});
afterAll(() => removeDir(dir));

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

const FULL = `
[kbs]
url = "https://kbs.example:8080/"
cert = "/etc/coco-decoder/kbs-ca.pem"
cert_only = true
allow_http = false
timeout_ms = 5000
total_timeout_ms = 45000
tee_key_algorithm = "rsa-oaep-256"
protocol = "0.2.0"
tee_names = "legacy"

[attestation]
tee = "snp"
snp_vmpl = 2
configfs_tsm_root = "/sys/kernel/config/tsm/report"
tdx_guest_device = "/dev/tdx-guest"
sev_guest_device = "/dev/sev-guest0"
ccel_path = "/tmp/ccel"
azure_evidence_version = 1
addon_path = "/opt/tee.node"
tpm_device = "/dev/tpmrm1"

[cache]
dir = "/run/coco"
refresh_margin_seconds = 0
lock_timeout_ms = 1000

[log]
level = "debug"
file = "/var/log/coco-decoder.log"
syslog = true
syslog_failures = false
format = "json"

[keyprovider]
timeout_ms = 1234
wrap_kid = "kbs:///default/image-kek/app"
wrap_kek_file = "/etc/coco-decoder/kek.bin"

[integrity]
check_plain_digest = true

[containerd]
address = "unix:///run/k3s/containerd/containerd.sock"
lookup = false
timeout_ms = 2500
`;

describe('path precedence', () => {
  it('--config wins over COCO_DECODER_CONFIG', async () => {
    const a = file('a.toml', '[log]\nlevel = "warn"\n');
    const b = file('b.toml', '[log]\nlevel = "info"\n');
    const c = await loadConfig({ path: a, env: { COCO_DECODER_CONFIG: b } });
    expect(c.source).toBe(a);
    expect(c.log.level).toBe('warn');
  });

  it('COCO_DECODER_CONFIG is used without --config', async () => {
    const b = file('b2.toml', '[log]\nlevel = "info"\n');
    const c = await loadConfig({ env: { COCO_DECODER_CONFIG: b } });
    expect(c.source).toBe(b);
    expect(c.log.level).toBe('info');
  });

  it('an explicitly named file that is missing is an error naming its origin', async () => {
    const missing = join(dir, 'nope.toml');
    await expect(loadConfig({ path: missing, env: {} })).rejects.toThrow(`config ${missing}: file not found (named by --config)`);
    await expect(loadConfig({ env: { COCO_DECODER_CONFIG: missing } })).rejects.toThrow(/named by COCO_DECODER_CONFIG/);
  });

  it.skipIf(existsSync(DEFAULT_CONFIG_PATH))('the default path missing means defaults', async () => {
    expect(await loadConfig({ env: {} })).toEqual(defaultConfig());
  });

  it('an unreadable path (a directory) is an error', async () => {
    await expect(loadConfig({ path: dir, env: {} })).rejects.toThrow(/cannot read \(EISDIR\)/);
  });
});

describe('keys', () => {
  it('maps every documented key', () => {
    const c = parseConfig(FULL, '/x.toml');
    expect(c).toEqual({
      source: '/x.toml',
      kbs: {
        url: 'https://kbs.example:8080',
        cert: '/etc/coco-decoder/kbs-ca.pem',
        certOnly: true,
        allowHttp: false,
        timeoutMs: 5000,
        totalTimeoutMs: 45000,
        teeKeyAlgorithm: 'rsa-oaep-256',
        protocol: '0.2.0',
        teeNames: 'legacy',
      },
      attestation: {
        tee: 'snp',
        snpVmpl: 2,
        configfsTsmRoot: '/sys/kernel/config/tsm/report',
        tdxGuestDevice: '/dev/tdx-guest',
        sevGuestDevice: '/dev/sev-guest0',
        ccelPath: '/tmp/ccel',
        addonPath: '/opt/tee.node',
        tpmDevice: '/dev/tpmrm1',
        azureEvidenceVersion: 1,
      },
      cache: { dir: '/run/coco', refreshMarginSeconds: 0, lockTimeoutMs: 1000 },
      log: { level: 'debug', file: '/var/log/coco-decoder.log', syslog: true, syslogFailures: false, format: 'json' },
      keyprovider: { timeoutMs: 1234, wrapKid: 'kbs:///default/image-kek/app', wrapKekFile: '/etc/coco-decoder/kek.bin' },
      integrity: { checkPlainDigest: true },
      containerd: { address: 'unix:///run/k3s/containerd/containerd.sock', lookup: false, timeoutMs: 2500 },
    });
  });

  it('attestation.azure_evidence_version 0 is refused with the trustee versions that need each', () => {
    expect(() => parseConfig('[attestation]\nazure_evidence_version = 0\n', '/c.toml')).toThrow(/use 1 with trustee v0\.18–v0\.20, 2 from v0\.21/);
  });

  it('containerd.address must be a Unix socket path', () => {
    expect(() => parseConfig('[containerd]\naddress = "tcp://127.0.0.1:1234"\n', '/c.toml')).toThrow(/containerd\.address must be a Unix socket path/);
  });

  it('kbs.cert_only needs kbs.cert', () => {
    expect(() => parseConfig('[kbs]\ncert_only = true\n', '/c.toml')).toThrow(/kbs\.cert_only.*needs kbs\.cert/);
  });

  it('an empty file gives the defaults (with the source recorded)', () => {
    expect(parseConfig('', '/e.toml')).toEqual({ ...defaultConfig(), source: '/e.toml' });
  });

  it('keeps a KBS path prefix and drops the trailing slash', () => {
    expect(parseConfig('[kbs]\nurl = "https://gw.example/trustee/"\n', '/f').kbs.url).toBe('https://gw.example/trustee');
  });

  it('plain http needs allow_http = true, in either key order', () => {
    expect(() => parseConfig('[kbs]\nurl = "http://10.0.0.1:8080"\n', '/f')).toThrow(
      'config /f: kbs.url uses plain http://, which exposes the attestation token; use https:// or set kbs.allow_http = true',
    );
    expect(parseConfig('[kbs]\nurl = "http://10.0.0.1:8080"\nallow_http = true\n', '/f').kbs.url).toBe('http://10.0.0.1:8080');
    expect(parseConfig('[kbs]\nallow_http = true\nurl = "http://10.0.0.1:8080"\n', '/f').kbs.allowHttp).toBe(true);
  });
});

describe('errors name the file and the dotted key', () => {
  it.each([
    ['[kbs]\ntimeout_ms = 0\n', 'kbs.timeout_ms must be a positive integer'],
    ['[kbs]\ntimeout_ms = 1.0\n', 'kbs.timeout_ms must be a positive integer'],
    ['[kbs]\ntimeout_ms = "10"\n', 'kbs.timeout_ms must be a positive integer'],
    ['[kbs]\ntimeout_ms = 5000\ntotal_timeout_ms = 100\n', 'kbs.total_timeout_ms must be at least kbs.timeout_ms'],
    ['[kbs]\nurl = "ftp://kbs"\n', 'kbs.url must be an https:// URL'],
    ['[kbs]\nurl = "not a url"\n', 'kbs.url is not a valid URL'],
    ['[kbs]\nurl = "https://u:p@kbs"\n', 'kbs.url must not contain credentials'],
    ['[kbs]\nurl = "https://kbs/?x=1"\n', 'kbs.url must not contain a query or fragment'],
    ['[kbs]\ncert = "relative/ca.pem"\n', 'kbs.cert must be an absolute path'],
    ['[kbs]\nallow_http = "yes"\n', 'kbs.allow_http must be true or false'],
    ['[kbs]\ntee_key_algorithm = "rsa1_5"\n', 'kbs.tee_key_algorithm must be one of "ec-p256", "rsa-oaep-256"'],
    ['[kbs]\nprotocol = "0.1.1"\n', 'kbs.protocol must be one of "auto", "0.4.0", "0.2.0"'],
    ['[kbs]\nurl_ = "https://kbs"\n', 'kbs.url_ unknown key'],
    ['[attestation]\ntee = "sgx"\n', 'attestation.tee must be one of "auto", "sample", "tdx", "snp", "az-tdx-vtpm", "az-snp-vtpm"'],
    ['[attestation]\nsnp_vmpl = 4\n', 'attestation.snp_vmpl must be an integer from 0 to 3'],
    ['[cache]\nrefresh_margin_seconds = -1\n', 'cache.refresh_margin_seconds must be an integer from 0'],
    ['[cache]\ndir = ""\n', 'cache.dir must be a non-empty string'],
    ['[log]\nlevel = "trace"\n', 'log.level must be one of'],
    ['[log]\nformat = "xml"\n', 'log.format must be one of "text", "json"'],
    ['[keyprovider]\ntimeout_ms = 99999999999\n', 'keyprovider.timeout_ms must be a positive integer'],
    ['[kbs.extra]\na = 1\n', 'kbs.extra unknown key'],
    ['[tls]\nx = 1\n', 'tls unknown table'],
    ['kbs = "https://kbs"\n', 'kbs must be a table'],
  ])('%j', (text, message) => {
    let err: unknown;
    try {
      parseConfig(text, '/etc/coco-decoder/config.toml');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DecoderError);
    expect(describeError(err)).toContain(`config /etc/coco-decoder/config.toml: ${message}`);
    expect(describeError(err)).not.toMatch(/\n/);
  });

  it('TOML syntax errors give the line in one line', () => {
    expect(() => parseConfig('[kbs]\nurl = \n', '/f')).toThrow(/^config \/f: invalid TOML at line 2, column \d+: [^\n]+$/);
  });
});

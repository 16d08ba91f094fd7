/**
 * `coco-decoder evidence` through the real entry point (src/main.ts), including the SNP path down to the real
 * addon with an LD_PRELOAD stand-in for /dev/sev-guest (this machine has no TEE).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADDON, ensureAddonBuilt, REPO } from '../../helpers/tee-native-helpers.js';

const FIX = path.join(REPO, 'test', 'fixtures', 'tee');
let dir: string;
let configFile: string;

beforeAll(() => {
  ensureAddonBuilt();
  dir = mkdtempSync(path.join(tmpdir(), 'evidence-cli-'));
  configFile = path.join(dir, 'config.toml');
  // Every TEE path points into the temp dir: detection must see nothing on this machine.
  writeFileSync(
    configFile,
    `[attestation]
tee = "auto"
configfs_tsm_root = "${dir}/no-configfs"
tdx_guest_device = "${dir}/tdx_guest"
sev_guest_device = "${dir}/sev-guest"
ccel_path = "${dir}/no-CCEL"
addon_path = "${ADDON}"
`,
  );
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function cli(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(REPO, 'src', 'main.ts'), 'evidence', ...args], {
    cwd: REPO,
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, COCO_DECODER_CONFIG: '', ...env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('coco-decoder evidence', () => {
  it('prints sample evidence for --report-data, only JSON on stdout', () => {
    const r = cli(['--config', configFile, '--tee', 'sample', '--report-data', '0102ff']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ svn: '1', report_data: Buffer.from([1, 2, 0xff]).toString('base64') });
    expect(r.stderr).toMatch(/tee=sample \(NOT hardware evidence\)/);
  });

  it('defaults the report data to 48 zero bytes', () => {
    const r = cli(['--config', configFile, '--tee', 'sample']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).report_data).toBe(Buffer.alloc(48).toString('base64'));
  });

  it('with tee = auto on a machine without a TEE: a clear error and exit 1, never sample', () => {
    const r = cli(['--config', configFile]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/no TEE detected.*set attestation.tee/);
  });

  it('--tee tdx without configfs-tsm explains what is missing', () => {
    const r = cli(['--config', configFile, '--tee', 'tdx']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot get a TDX quote: configfs-tsm is not available/);
  });

  it('rejects bad arguments with one line each', () => {
    expect(cli(['--config', configFile, '--report-data', 'xyz']).stderr).toMatch(/--report-data must be hex/);
    expect(cli(['--config', configFile, '--report-data', '00'.repeat(65)]).stderr).toMatch(/65 bytes; at most 64/);
    const bad = cli(['--config', configFile, '--tee', 'sgx']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/--tee "sgx" is not one of auto, sample, tdx, snp/);
    const unknown = cli(['--frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/usage: coco-decoder evidence/);
  });

  it('--tee snp: hardware path through the real addon (sev-guest stand-in via LD_PRELOAD)', () => {
    const shim = path.join(dir, 'shim.so');
    execFileSync('cc', ['-shared', '-fPIC', '-O1', '-o', shim, path.join(REPO, 'test', 'helpers', 'tee-ioctl-shim.c'), '-ldl'], { timeout: 60_000 });
    const device = path.join(dir, 'sev-guest');
    writeFileSync(device, '');
    const r = cli(['--config', configFile, '--tee', 'snp', '--report-data', 'ab'.repeat(48)], {
      LD_PRELOAD: shim,
      FAKE_SEV: device,
      FAKE_SNP_REPORT: path.join(FIX, 'trustee-snp-test-vlek-report.bin'),
      FAKE_LOG: path.join(dir, 'shim.log'),
    });
    expect(r.code, r.stderr).toBe(0);
    const ev = JSON.parse(r.stdout) as { attestation_report: { report_data: number[]; vmpl: number }; cert_chain: unknown };
    expect(ev.attestation_report.report_data).toEqual([...Buffer.alloc(48, 0xab), ...Buffer.alloc(16)]);
    expect(ev.cert_chain).toBeNull();
    expect(r.stderr).toMatch(/tee=snp$/m);
    expect(readFileSync(path.join(dir, 'shim.log'), 'utf8')).toMatch(/req=0xc0205302 msg_version=1/);
  });
});

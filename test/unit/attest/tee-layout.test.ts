/**
 * Struct layouts and ioctl numbers, four ways: the kernel UAPI headers installed on this machine (compiled here
 * with `cc`, offsetof/sizeof), the addon's vendored header compiled as C, the values baked into the built
 * tee.node, and the TS constants. Debian 12's linux-libc-dev (6.1) ships <linux/sev-guest.h> but not
 * <linux/tdx-guest.h> (UAPI since 6.2); the TDX comparison with the kernel header is skipped when it is absent.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadTeeAddonFrom, UAPI_LAYOUT } from '../../../src/attest/native.js';
import { SNP_RSP_REPORT_OFFSET } from '../../../src/attest/snp-report.js';
import { ADDON, ensureAddonBuilt, REPO } from '../../helpers/tee-native-helpers.js';

const PROGRAM = String.raw`
#include <stdio.h>
#include <stddef.h>
#include "tee_uapi.h"
#if __has_include(<linux/sev-guest.h>)
#include <linux/sev-guest.h>
#define HAVE_SEV 1
#endif
#if __has_include(<linux/tdx-guest.h>)
#include <linux/tdx-guest.h>
#define HAVE_TDX 1
#endif
#define P(k, v) printf("%s\"%s\":%lu", first ? "" : ",", k, (unsigned long)(v)), first = 0
int main(void) {
  int first = 1;
  printf("{\"vendored\":{");
  P("TDX_CMD_GET_REPORT0", CD_TDX_CMD_GET_REPORT0);
  P("SNP_GET_REPORT", CD_SNP_GET_REPORT);
  P("SNP_GET_EXT_REPORT", CD_SNP_GET_EXT_REPORT);
  P("sizeof_tdx_report_req", sizeof(struct cd_tdx_report_req));
  P("offsetof_tdx_report_req_tdreport", offsetof(struct cd_tdx_report_req, tdreport));
  P("sizeof_snp_report_req", sizeof(struct cd_snp_report_req));
  P("offsetof_snp_report_req_vmpl", offsetof(struct cd_snp_report_req, vmpl));
  P("offsetof_snp_report_req_rsvd", offsetof(struct cd_snp_report_req, rsvd));
  P("sizeof_snp_report_resp", sizeof(struct cd_snp_report_resp));
  P("sizeof_snp_ext_report_req", sizeof(struct cd_snp_ext_report_req));
  P("offsetof_snp_ext_report_req_certs_address", offsetof(struct cd_snp_ext_report_req, certs_address));
  P("offsetof_snp_ext_report_req_certs_len", offsetof(struct cd_snp_ext_report_req, certs_len));
  P("sizeof_snp_guest_request_ioctl", sizeof(struct cd_snp_guest_request_ioctl));
  P("offsetof_snp_guest_request_ioctl_req_data", offsetof(struct cd_snp_guest_request_ioctl, req_data));
  P("offsetof_snp_guest_request_ioctl_resp_data", offsetof(struct cd_snp_guest_request_ioctl, resp_data));
  P("offsetof_snp_guest_request_ioctl_exitinfo2", offsetof(struct cd_snp_guest_request_ioctl, exitinfo2));
  P("rsp_report_offset", CD_SNP_RSP_REPORT_OFFSET);
  printf("},\"sev\":");
#ifdef HAVE_SEV
  first = 1;
  printf("{");
  P("SNP_GET_REPORT", SNP_GET_REPORT);
  P("SNP_GET_EXT_REPORT", SNP_GET_EXT_REPORT);
  P("sizeof_snp_report_req", sizeof(struct snp_report_req));
  P("offsetof_snp_report_req_vmpl", offsetof(struct snp_report_req, vmpl));
  P("offsetof_snp_report_req_rsvd", offsetof(struct snp_report_req, rsvd));
  P("sizeof_snp_report_resp", sizeof(struct snp_report_resp));
  P("sizeof_snp_ext_report_req", sizeof(struct snp_ext_report_req));
  P("offsetof_snp_ext_report_req_certs_address", offsetof(struct snp_ext_report_req, certs_address));
  P("offsetof_snp_ext_report_req_certs_len", offsetof(struct snp_ext_report_req, certs_len));
  P("sizeof_snp_guest_request_ioctl", sizeof(struct snp_guest_request_ioctl));
  P("offsetof_snp_guest_request_ioctl_req_data", offsetof(struct snp_guest_request_ioctl, req_data));
  P("offsetof_snp_guest_request_ioctl_resp_data", offsetof(struct snp_guest_request_ioctl, resp_data));
  P("offsetof_snp_guest_request_ioctl_exitinfo2", offsetof(struct snp_guest_request_ioctl, exitinfo2));
  printf("}");
#else
  printf("null");
#endif
  printf(",\"tdx\":");
#ifdef HAVE_TDX
  first = 1;
  printf("{");
  P("TDX_CMD_GET_REPORT0", TDX_CMD_GET_REPORT0);
  P("sizeof_tdx_report_req", sizeof(struct tdx_report_req));
  P("offsetof_tdx_report_req_tdreport", offsetof(struct tdx_report_req, tdreport));
  printf("}");
#else
  printf("null");
#endif
  printf("}\n");
  return 0;
}
`;

type Layout = Record<string, number>;
let out: { vendored: Layout; sev: Layout | null; tdx: Layout | null };
let dir: string;

beforeAll(() => {
  ensureAddonBuilt();
  dir = mkdtempSync(path.join(tmpdir(), 'tee-layout-'));
  writeFileSync(path.join(dir, 'layout.c'), PROGRAM);
  const exe = path.join(dir, 'layout');
  execFileSync('cc', ['-std=gnu11', '-Wall', '-Werror', '-I', path.join(REPO, 'native', 'src'), '-o', exe, path.join(dir, 'layout.c')], {
    timeout: 60_000,
  });
  out = JSON.parse(execFileSync(exe, { encoding: 'utf8', timeout: 10_000 })) as typeof out;
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const pick = (l: Layout, keys: string[]) => Object.fromEntries(keys.map((k) => [k, l[k]]));

describe('UAPI layout', () => {
  it('the vendored header compiled as C equals the TS constants', () => {
    const { rsp_report_offset, ...rest } = out.vendored;
    expect(rest).toEqual(UAPI_LAYOUT);
    expect(rsp_report_offset).toBe(SNP_RSP_REPORT_OFFSET);
  });

  it('the built addon carries the same layout', () => {
    expect(loadTeeAddonFrom({ addonPath: ADDON }).layout).toEqual(UAPI_LAYOUT);
  });

  it('matches the installed kernel <linux/sev-guest.h>', (ctx) => {
    if (!out.sev) ctx.skip();
    const keys = Object.keys(out.sev!);
    expect(keys.length).toBe(13);
    expect(out.sev).toEqual(pick(UAPI_LAYOUT, keys));
  });

  it('matches the installed kernel <linux/tdx-guest.h> (absent from Debian 12’s 6.1 headers)', (ctx) => {
    if (!out.tdx) ctx.skip();
    expect(out.tdx).toEqual(pick(UAPI_LAYOUT, Object.keys(out.tdx!)));
  });

  it('ioctl numbers decode to the documented direction/size/type/nr (asm-generic/ioctl.h encoding)', () => {
    const decode = (n: number) => ({ dir: n >>> 30, size: (n >>> 16) & 0x3fff, type: String.fromCharCode((n >>> 8) & 0xff), nr: n & 0xff });
    expect(decode(UAPI_LAYOUT.TDX_CMD_GET_REPORT0)).toEqual({ dir: 3, size: 1088, type: 'T', nr: 1 });
    expect(decode(UAPI_LAYOUT.SNP_GET_REPORT)).toEqual({ dir: 3, size: 32, type: 'S', nr: 0 });
    expect(decode(UAPI_LAYOUT.SNP_GET_EXT_REPORT)).toEqual({ dir: 3, size: 32, type: 'S', nr: 2 });
  });

  it('the addon compiles with its static_asserts (a layout change would break the build)', () => {
    // Compile the header alone as C++ so the static_asserts run even where node-gyp is not invoked.
    const cc = path.join(dir, 'asserts.cc');
    writeFileSync(cc, '#include "tee_uapi.h"\nint main() { return 0; }\n');
    const r = spawnSync('c++', ['-std=c++17', '-fsyntax-only', '-I', path.join(REPO, 'native', 'src'), cc], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
  });
});

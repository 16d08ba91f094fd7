/**
 * Which TEE this guest is, in guest-components' order (`attester/src/lib.rs detect_tee_type`): the configfs-tsm
 * provider, then the guest device nodes, then the Azure vTPM's HCL report (Azure CVMs hide the hardware
 * behind a paravisor), then the SEV-SNP platform device. `undefined` when none is present: the caller turns
 * that into an error, never into `sample`.
 */
import { promises as fsp } from 'node:fs';
import type { AttestationConfig } from '../config/types.js';
import type { TeeType } from './attester.js';
import { tsmProbeProvider, type TsmFs } from './configfs-tsm.js';
import { exists } from '../util/exists.js';

/** Paths and seams beyond what the config carries (tests, unusual systems). */
export interface DetectOptions {
  tsmFs?: TsmFs;
  /** `/sys/class/dmi/id/chassis_asset_tag` */
  dmiChassisAssetTag?: string;
  /** `/dev/tpmrm0` */
  tpmDevice?: string;
  /** `/sys/devices/platform/sev-guest` */
  sevPlatformDir?: string;
  /** Replaces the TPM device transport (tests). */
  tpmTransport?: import('./azure-vtpm.js').TpmTransport;
}

export const DEFAULT_DETECT_PATHS = {
  dmiChassisAssetTag: '/sys/class/dmi/id/chassis_asset_tag',
  tpmDevice: '/dev/tpmrm0',
  sevPlatformDir: '/sys/devices/platform/sev-guest',
} as const;

export async function detectTee(config: AttestationConfig, options: DetectOptions = {}): Promise<TeeType | undefined> {
  // 1. configfs-tsm provider (needs root to create an entry; silently skipped otherwise).
  const provider = await tsmProbeProvider(config.configfsTsmRoot, options.tsmFs);
  if (provider === 'tdx_guest') return 'tdx';
  if (provider === 'sev_guest') return 'snp';

  // 2. Guest device nodes (existence needs no privilege).
  if (await exists(config.tdxGuestDevice)) return 'tdx';
  if (await exists(config.sevGuestDevice)) return 'snp';

  // 3. Azure CVM: the Azure DMI tag says "Azure VM"; only the HCL report in the vTPM says "confidential" and which.
  const tag = await readText(options.dmiChassisAssetTag ?? DEFAULT_DETECT_PATHS.dmiChassisAssetTag);
  if (tag !== undefined) {
    const { AZURE_CHASSIS_ASSET_TAG, deviceTpmTransport, readHclTeeType } = await import('./azure-vtpm.js');
    if (tag.trim() === AZURE_CHASSIS_ASSET_TAG) {
      const tpm = options.tpmDevice ?? DEFAULT_DETECT_PATHS.tpmDevice;
      const transport = options.tpmTransport ?? ((await exists(tpm)) ? deviceTpmTransport(tpm) : undefined);
      const azure = transport ? await readHclTeeType(transport) : undefined;
      if (azure) return azure;
    }
  }

  // 4. SEV-SNP platform device without a usable /dev node (e.g. not passed into a container).
  if (await exists(options.sevPlatformDir ?? DEFAULT_DETECT_PATHS.sevPlatformDir)) return 'snp';
  return undefined;
}



async function readText(p: string): Promise<string | undefined> {
  return fsp.readFile(p, 'utf8').catch(() => undefined);
}

/**
 * Trustee's `/auth` version gate (trustee kbs/src/attestation/backend.rs):
 * `Version::parse(request.version)` must succeed and `VersionReq "=X.Y.Z"` must match — an exact
 * major.minor.patch with an empty pre-release; build metadata is ignored, as in the semver crate.
 */

const SEMVER =
  /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$/;

export type VersionCheck = { ok: true } | { ok: false; cause: string };

export function checkVersion(requested: string, expected: string): VersionCheck {
  const m = SEMVER.exec(requested);
  if (!m) return { ok: false, cause: 'failed to parse KBS version' };
  const [, major, minor, patch, pre] = m;
  if (`${major}.${minor}.${patch}` === expected && pre === undefined) return { ok: true };
  return {
    ok: false,
    cause: `KBS Client Protocol Version Mismatch: expect =${expected} while the request is ${requested}`,
  };
}

/**
 * Imports point downwards only. Reads every `src/` module's imports (static `import … from`, `export … from` and
 * dynamic `import('…')`, type-only ones included: a type import is a dependency of the design too) and fails on an
 * edge the architecture forbids, naming the file and the import.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(import.meta.dirname, '../../../src');

/** Folder → the src folders it may not import from. Unlisted folders (cli, the root) may import anything. */
const FORBIDDEN: Record<string, readonly string[]> = {
  ocicrypt: ['cli', 'streamprocessor'],
  kbs: ['cli', 'ocicrypt', 'streamprocessor'],
  attest: ['cli', 'kbs', 'ocicrypt', 'streamprocessor'],
  streamprocessor: ['cli', 'kbs', 'ocicrypt'],
  util: ['cli', 'kbs', 'ocicrypt', 'streamprocessor', 'attest', 'config', 'containerd', 'image'],
  config: ['cli', 'kbs', 'ocicrypt', 'streamprocessor', 'attest', 'containerd', 'image'],
  // containerd's API client and the content-store lookup know OCI manifests, not ocicrypt or the KBS.
  containerd: ['cli', 'kbs', 'ocicrypt', 'streamprocessor', 'attest', 'config', 'image'],
};

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

const IMPORT_RE = /(?:^|\n)\s*(?:import|export)\s[^'"`;]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g;

/** The top folder below src/ a file lives in ('' for src/ itself). */
const folderOf = (file: string): string => {
  const rel = path.relative(SRC, file).split(path.sep);
  return rel.length > 1 ? rel[0]! : '';
};

export function forbiddenEdges(): string[] {
  const out: string[] = [];
  for (const file of sources(SRC)) {
    const from = folderOf(file);
    const banned = FORBIDDEN[from];
    if (!banned) continue;
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(IMPORT_RE)) {
      const spec = m[1] ?? m[2]!;
      if (!spec.startsWith('.')) continue;
      const target = path.resolve(path.dirname(file), spec);
      if (!target.startsWith(SRC + path.sep)) continue;
      const to = folderOf(target);
      if (banned.includes(to)) out.push(`${path.relative(SRC, file)} imports ${spec} (${from} → ${to})`);
    }
  }
  return out;
}

describe('src/ layering', () => {
  it('has no import that points upwards', () => {
    expect(forbiddenEdges()).toEqual([]);
  });

  it('the checker sees real imports (it would catch a break)', () => {
    const all = sources(SRC).flatMap((f) => [...readFileSync(f, 'utf8').matchAll(IMPORT_RE)]);
    expect(all.length).toBeGreaterThan(100);
  });
});

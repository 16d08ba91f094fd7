/** A key wrapper's privopts for one entry (null: not addressed to us), for tests that only check the bytes. */
import type { KeyWrapper, UnwrapContext } from '../../src/ocicrypt/keywrap/keywrapper.js';

export async function unwrapEntry(wrapper: Pick<KeyWrapper, 'unwrap'>, entry: Buffer, ctx: UnwrapContext): Promise<Buffer | null> {
  return (await wrapper.unwrap(entry, ctx))?.privopts ?? null;
}

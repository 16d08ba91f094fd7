/**
 * The one-line message a failing call gives (describeError, as the CLI prints it), for tests that pin wording.
 * Both throw when the call does not fail: a test that expects an error must not pass without one.
 */
import { describeError } from '../../src/util/errors.js';

export function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return describeError(err);
  }
  throw new Error('expected an error');
}

export async function rejectionOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    return describeError(err);
  }
  throw new Error('expected an error');
}

import { describe, expect, it } from 'vitest';
import { boundedLine, quoteUntrusted, withoutControlChars } from '../../../src/util/quote.js';

describe('quoting untrusted text', () => {
  it('escapes C0, DEL, C1 and the Unicode line separators; keeps tab and printable text', () => {
    expect(withoutControlChars('a\u001b]0;x\u0007b\u007f\u0085\u009b\u2028\tc')).toBe('a\\u001b]0;x\\u0007b\\u007f\\u0085\\u009b\\u2028\tc');
    expect(withoutControlChars('plain: ünïcödé ✓')).toBe('plain: ünïcödé ✓');
  });

  it('escapes the bidirectional controls that would reorder what a reader sees (Trojan Source)', () => {
    expect(withoutControlChars('layer \u202edeggat\u202c ok \u2066x\u2069 \u200e\u200f\u061c')).toBe(
      'layer \\u202edeggat\\u202c ok \\u2066x\\u2069 \\u200e\\u200f\\u061c',
    );
    expect(quoteUntrusted('a\u202eb')).toBe('"a\\u202eb"');
    expect(withoutControlChars('עברית and العربية')).toBe('עברית and العربية'); // right-to-left text itself stays
  });

  it('JSON-quotes strings, truncates to max characters with an ellipsis, never splits a surrogate pair', () => {
    expect(quoteUntrusted('x"y\n')).toBe('"x\\"y\\n"');
    expect(quoteUntrusted('a'.repeat(10), 4)).toBe('"aaaa…"');
    expect(quoteUntrusted('ab😀', 3)).toBe('"ab…"');
    expect(quoteUntrusted('\u009b')).toBe('"\\u009b"');
  });

  it('shows non-strings by their JSON form without calling their methods', () => {
    expect(quoteUntrusted(42)).toBe('42');
    expect(quoteUntrusted(null)).toBe('null');
    expect(quoteUntrusted(undefined)).toBe('undefined');
    expect(quoteUntrusted({ toString: () => 'evil', a: '\u001b' })).toBe('"{\\"a\\":\\"\\\\u001b\\"}"');
  });

  it('bounds a whole line in UTF-8 bytes without cutting a character in half', () => {
    const line = boundedLine('é'.repeat(5000));
    expect(Buffer.byteLength(line)).toBeLessThanOrEqual(4096);
    expect(line.endsWith('é…')).toBe(true);
    expect(boundedLine('one\ntwo\r\nthree\u001b')).toBe('one two three\\u001b');
  });
});

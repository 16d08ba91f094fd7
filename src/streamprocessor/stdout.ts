/**
 * stdout for the plaintext. Node makes `process.stdout` on a pipe blocking, which stalls decryption whenever
 * containerd is slow to read; a non-blocking socket on fd 1 lets us decrypt ahead by up to `bufferBytes`.
 * Files and TTYs (manual runs) keep `process.stdout`. Never use both on one fd: they would fight over O_NONBLOCK.
 * (A module of its own so that node:net is loaded only when a layer is decoded.)
 */
import { fstatSync } from 'node:fs';
import { Socket, type SocketConstructorOpts } from 'node:net';
import type { Writable } from 'node:stream';

export function openStdout(bufferBytes: number): { out: Writable; close: () => void } {
  const st = fstatSync(1);
  if (st.isFIFO() || st.isSocket()) {
    // Node's Socket passes stream options through to Duplex; @types/node does not declare them.
    const opts: SocketConstructorOpts & { writableHighWaterMark: number } = {
      fd: 1,
      readable: false,
      writable: true,
      writableHighWaterMark: bufferBytes,
    };
    const sock = new Socket(opts);
    return { out: sock, close: () => sock.destroy() };
  }
  // A late error must not surface as an uncaught exception; the decipher reports write errors itself.
  process.stdout.on('error', () => {});
  return { out: process.stdout, close: () => {} };
}

/**
 * The payload pipe read through a libuv stream, where the addon's readFd is not available: the non-blocking
 * stream lets the deadline interrupt the read. A module of its own so that node:net is loaded only then.
 */
import net from 'node:net';
import type { PipeReadFailure } from './fd3.js';

export function readPipeWithSocket(fd: number, maxBytes: number, timeoutMs: number): Promise<Buffer | PipeReadFailure> {
  return new Promise((resolve) => {
    const sock = new net.Socket({ fd, readable: true, writable: false });
    const chunks: Buffer[] = [];
    let total = 0;
    const fail = (f: PipeReadFailure): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(f);
    };
    const timer = setTimeout(() => fail({ reason: 'timeout' }), timeoutMs);
    sock.on('data', (chunk: Buffer) => {
      total += chunk.length;
      if (total > maxBytes) return fail({ reason: 'too-large' });
      chunks.push(chunk);
    });
    sock.on('end', () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(Buffer.concat(chunks, total));
    });
    sock.on('error', (err: NodeJS.ErrnoException) => fail({ reason: 'error', code: err.code ?? err.message }));
  });
}

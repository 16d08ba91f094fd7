/**
 * Rung 9: the audit log can be written where `log.*` says, checked without writing anything: a missing audit
 * line is otherwise only a warning the decoder prints at `log.level = "warn"`.
 */
import { constants } from 'node:fs';
import { access, lstat, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Config } from '../../config/types.js';
import { findExecutable } from './executables.js';
import { fail, pass, skip } from './rung.js';
import type { RungResult } from './rung.js';

export interface LogCheckOptions {
  env: NodeJS.ProcessEnv;
  /** Test seam: the syslog socket (default /dev/log). */
  syslogSocket?: string;
}

export async function checkLog(config: Config, o: LogCheckOptions): Promise<RungResult> {
  const { log } = config;
  const level = `log.level = "${log.level}"`;
  if (log.file === undefined && !log.syslog) return skip('log', `no audit log configured (log.file, log.syslog); ${level}`);
  const problems: string[] = [];
  const fixes: string[] = [];
  const good: string[] = [];
  if (log.file !== undefined) {
    const file = log.file;
    const st = await stat(file).catch((err: NodeJS.ErrnoException) => err);
    if (st instanceof Error) {
      if (st.code !== 'ENOENT') {
        problems.push(`audit file ${file}: ${st.code ?? st.message}`);
        fixes.push(`make ${file} writable by root`);
      } else {
        const dir = dirname(file);
        const dirOk = await access(dir, constants.W_OK | constants.X_OK).then(() => true, () => false);
        if (dirOk && (await lstat(dir)).isDirectory()) good.push(`audit file ${file} will be created (0640)`);
        else {
          problems.push(`audit file ${file} cannot be created: ${dir} is missing or not writable`);
          fixes.push(`install -d -m 0750 ${dir}`);
        }
      }
    } else if (!st.isFile()) {
      problems.push(`audit file ${file} is not a regular file`);
      fixes.push(`point log.file at a regular file`);
    } else if (!(await access(file, constants.W_OK).then(() => true, () => false))) {
      problems.push(`audit file ${file} is not writable`);
      fixes.push(`chmod u+w ${file}`);
    } else good.push(`audit file ${file} is writable`);
  }
  if (log.syslog) {
    const socket = o.syslogSocket ?? '/dev/log';
    const sock = await stat(socket).catch(() => undefined);
    const logger = await findExecutable('logger', o.env);
    if (sock === undefined || !sock.isSocket()) {
      problems.push(`log.syslog = true but ${socket} is not a socket`);
      fixes.push('start journald or a syslog daemon, or set log.syslog = false');
    } else if (logger === undefined) {
      problems.push('log.syslog = true but logger(1) is not installed');
      fixes.push('install util-linux (Debian/Ubuntu: bsdutils)');
    } else good.push(`syslog via ${logger} to ${socket}`);
  }
  if (problems.length > 0) return fail('log', problems.join('; '), fixes.join('; '));
  return pass('log', `${good.join('; ')} (format ${log.format}); ${level}`);
}

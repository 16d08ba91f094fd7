import { access } from 'node:fs/promises';

/** Whether `path` can be reached (symlinks followed); never throws. */
export function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
